"""`t5pegasus prepare`: corpus files/dirs, `peoples-daily` or `tfds:NAME` -> a prepared dataset directory;
`--task simbert`: JSONL files of similar-sentence groups."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="text files or directories, 'peoples-daily', or tfds:NAME[:SPLIT[:FIELD]]; for "
                             "--task simbert JSONL files of {\"text\": ..., \"synonyms\": [...]}")
    parser.add_argument("-o", "--output", required=True, help="dataset directory to create")
    parser.add_argument("--tokenizer", required=True, help="vocab.txt (T5 PEGASUS) or sentencepiece .model")
    parser.add_argument("--tokenizer-kind", default="auto", choices=["auto", "wordpiece", "sentencepiece", "cpm"])
    parser.add_argument("--task", default="seq2seq", choices=["seq2seq", "pegasus", "lm", "unilm", "simbert"],
                        help="seq2seq: T5 PEGASUS pseudo-summaries; pegasus: masked gaps; simbert: groups of "
                             "similar sentences (each cut to the source / target length)")  # fmt: skip
    parser.add_argument("--max-source-len", type=int, default=384)
    parser.add_argument("--max-target-len", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=512, help="LM sequence length")
    parser.add_argument("--summary-ratio", type=float, default=0.25)
    parser.add_argument("--gap-ratio", type=float, default=0.3)
    parser.add_argument("--keep-prob", type=float, default=0.0, help="pegasus: chance a chosen sentence stays")
    parser.add_argument("--min-sentences", type=int, default=3)
    parser.add_argument("--doc-sep", default="line", choices=["line", "blank"],
                        help="one document per line, or blocks separated by blank lines")  # fmt: skip
    parser.add_argument("--tfds-data-dir", metavar="DIR",
                        help="where a tfds: dataset is prepared (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="processes making examples (default: every core this process may use); the output "
                             "is the same for any number")
    parser.add_argument("--runner", metavar="RUNNER",
                        help="make the dataset with an Apache Beam pipeline on this runner (DirectRunner, "
                             "DataflowRunner, FlinkRunner, SparkRunner; needs t5pegasus[beam]) instead of local "
                             "worker processes; inputs are files, folders or gs://... patterns")
    parser.add_argument("--pipeline-options", metavar="'--opt=v ...'", default="",
                        help="Beam pipeline options for --runner, one string after '=' (e.g. "
                             "--pipeline-options='--project=P --region=R --temp_location=gs://B/tmp')")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: only on a terminal)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from t5pegasus.pretrain.examples import ExampleConfig
    from t5pegasus.pretrain.prepare import available_cores, prepare_dataset, summary_lines
    from t5pegasus.text.load import kind_of, load_tokenizer, tokenizer_spec

    tok = load_tokenizer(args.tokenizer, kind=args.tokenizer_kind)
    kind = kind_of(tok)
    config = ExampleConfig(
        task=args.task, max_source_len=args.max_source_len, max_target_len=args.max_target_len,
        max_len=args.max_len, summary_ratio=args.summary_ratio, gap_ratio=args.gap_ratio,
        keep_prob=args.keep_prob, min_sentences=args.min_sentences, seed=args.seed,
    )  # fmt: skip
    info = tokenizer_spec(args.tokenizer, tok, kind)
    if args.task == "simbert":
        from t5pegasus.pretrain.groups import prepare_groups

        stats = prepare_groups(args.inputs, args.output, tok, info, config, overwrite=args.overwrite)
        print(f"groups read: {stats['groups read']}")
        for key in sorted(k for k in stats if k.startswith("groups dropped")):
            print(f"  {key}: {stats[key]}")
        print(f"examples written: {stats['examples']}\nwrote {args.output}")
        return 0
    if args.runner:
        import shlex

        from t5pegasus.pretrain.beam_prepare import prepare_with_beam

        stats = prepare_with_beam(args.inputs, args.output, info, config, runner=args.runner,
                                  beam_args=shlex.split(args.pipeline_options), doc_sep=args.doc_sep,
                                  overwrite=args.overwrite)
    else:
        stats = prepare_dataset(
            args.inputs, args.output, tok, info, config, doc_sep=args.doc_sep, tfds_data_dir=args.tfds_data_dir,
            overwrite=args.overwrite, progress=args.progress, workers=args.workers or available_cores(),
        )  # fmt: skip
    for line in summary_lines(stats):
        print(line)
    print(f"wrote {args.output}")
    return 0

"""Model families as flax.linen modules."""

from flax.core.meta import unbox

from t5pegasus.models import bert, gpt
from t5pegasus.models.bert import Bert, BertOutput
from t5pegasus.models.gpt import GPT
from t5pegasus.models.layers import count_params, stack_layers, unstack_layers
from t5pegasus.models.t5 import T5, Decoder, Encoder, decode_step, init_cache

__all__ = ["GPT", "T5", "Bert", "BertOutput", "Decoder", "Encoder", "bert", "count_params", "decode_step", "gpt",
           "init_cache", "stack_layers", "unbox", "unstack_layers"]

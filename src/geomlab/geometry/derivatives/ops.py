"""The one aten op taxonomy of the derivative stack, and the helpers that read an op's schema.

Both dispatch-mode passes classify ops from these tables: the piecewise-linearity check
(:mod:`geomlab.geometry.derivatives.eligibility`, which decides whether the cumulant path is
exact) and the Taylor recorder (:mod:`geomlab.geometry.derivatives.taylor.recorder`, which
decides what it must record and which writes it can follow). An op is named by
:func:`op_name` (overload and in-place underscore dropped).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

__all__ = [
    "AFFINE_OPS", "BATCH_NORM_OPS", "BATCH_NORM_TRAINING_ARG", "BILINEAR_FACTORS",
    "INPLACE_SAFE_OPS", "PIECEWISE_CONSTANT_OPS", "PIECEWISE_LINEAR_OPS", "PRIMAL_FREE_OPS",
    "RANDOM_OPS", "READS_OUTPUT_OPS", "STRUCTURAL_OPS", "TAYLOR_BILINEAR_OPS", "VALUE_FREE_OPS",
    "op_name", "storage_key", "tensor_leaves", "written_arguments",
]  # fmt: skip

# Ops whose output does not depend on the *values* of their tensor arguments.
VALUE_FREE_OPS = frozenset(
    {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
     "new_empty", "new_zeros", "new_ones", "new_full", "sym_size", "sym_stride", "sym_numel",
     "size", "stride", "is_same_size"}
)  # fmt: skip
# Random fills: value-free for the piecewise-linearity check (the values they overwrite do not
# matter); the Taylor recorder has no rule for them (an in-place fill of a tracked tensor).
RANDOM_OPS = frozenset({"bernoulli"})
# Piecewise constant in x (zero derivative almost everywhere, as autograd has it): outputs are
# constants for the derivative engines.
PIECEWISE_CONSTANT_OPS = frozenset(
    {"gt", "lt", "ge", "le", "eq", "ne", "sign", "argmax", "argmin", "isnan", "isinf",
     "isfinite", "floor", "ceil", "round", "trunc", "logical_and", "logical_or", "logical_not",
     "bitwise_and", "bitwise_or", "bitwise_not"}
)  # fmt: skip
# Linear in all their floating tensor arguments jointly, with no constant part: the Taylor
# rule applies the op to every coefficient (constant arguments enter as zeros).
STRUCTURAL_OPS = (
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "clone",
    "contiguous", "slice", "select", "cat", "stack", "squeeze", "unsqueeze", "flatten",
    "alias", "sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "split", "split_with_sizes", "unbind",
    "index_select", "_to_copy", "neg", "gather", "unfold", "flip", "roll", "repeat",
    "pixel_shuffle", "narrow", "movedim", "diagonal", "tril", "triu", "unflatten",
    "lift_fresh", "index",
)  # fmt: skip
# Affine in their input-dependent arguments jointly (any number of them may depend on x): the
# structural ops and the following.
AFFINE_OPS = frozenset(
    {
        *STRUCTURAL_OPS,
        "add",
        "sub",
        "detach",
        "copy",
        "fill",
        "zero",
        "constant_pad_nd",
        # dropout: the input times a mask drawn independently of its values (the CUDA
        # train-mode op; it returns (output, mask))
        "native_dropout",
        "_native_batch_norm_legit_no_training",
        "_batch_norm_no_update",
        # writes at constant indices / under a constant mask, and selection by a constant
        # condition: affine jointly in self and the source (a scatter with a reduction is not)
        "where",
        "masked_fill",
        "masked_scatter",
        "index_put",
        "index_copy",
        "index_add",
        "index_fill",
        "scatter_add",
        "as_strided",
        "_reshape_alias",
    }
)
# Batch-norm ops whose ``training`` flag is the positional argument at this index: affine
# (running statistics, independent of x) in eval mode; batch statistics in train mode.
BATCH_NORM_TRAINING_ARG = {
    "native_batch_norm": 5,
    "cudnn_batch_norm": 5,
    "miopen_batch_norm": 5,
    "_native_batch_norm_legit": 5,  # (input, w, b, running_mean, running_var, training, ...)
}
BATCH_NORM_OPS = frozenset(BATCH_NORM_TRAINING_ARG)
# Linear in each argument separately (positions of the factors): the cumulant path is exact
# only if at most one factor depends on x.
BILINEAR_FACTORS = {
    "mul": (0, 1),
    "mm": (0, 1),
    "bmm": (0, 1),
    "matmul": (0, 1),
    "addmm": (1, 2),
    "baddbmm": (1, 2),
    "linear": (0, 1),
    "convolution": (0, 1),
    "_convolution": (0, 1),
    "conv2d": (0, 1),
    "conv1d": (0, 1),
}
# Piecewise linear: autograd differentiates them as locally linear maps.
PIECEWISE_LINEAR_OPS = frozenset(
    {"relu", "threshold", "max_pool1d", "max_pool2d", "max_pool2d_with_indices",
     "max_pool3d_with_indices", "leaky_relu", "hardtanh", "abs", "clamp_min", "clamp_max",
     "clamp"}
)  # fmt: skip

# --- what the Taylor recorder needs to know of an op's rule --------------------------------

# Bilinear rules that read the primal of an input-dependent argument only when both factors
# depend on the input (or the denominator does).
TAYLOR_BILINEAR_OPS = frozenset({"mul", "div", "mm", "bmm", "matmul", "addmm"})
# Linear rules: they never read an input-dependent primal.
PRIMAL_FREE_OPS = frozenset(
    {*STRUCTURAL_OPS, "_reshape_alias", "add", "sub", "copy", "detach", "fill", "zero",
     "convolution", "_convolution", "index_put", "index_copy", "index_add", "scatter_add",
     "masked_scatter", "masked_fill", "index_fill", "scatter", "constant_pad_nd",
     "native_dropout"}
)  # fmt: skip
# Rules that read the op's primal output (so it must not change in place afterwards).
READS_OUTPUT_OPS = frozenset(
    {"tanh", "sigmoid", "exp", "expm1", "native_dropout", "_softmax", "_safe_softmax",
     "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices"}
)  # fmt: skip
# In place, the rule reads only the series and post-op values that determine the same result.
INPLACE_SAFE_OPS = frozenset(
    {"relu", "leaky_relu", "hardtanh", "add", "sub", "mul", "div", "copy", "index_put",
     "index_copy", "index_add", "scatter_add", "masked_scatter", "masked_fill", "index_fill",
     "scatter", "fill", "zero", "native_dropout"}
)  # fmt: skip


def op_name(func) -> str:
    """The aten op's name without overload or in-place underscore: ``aten.add_.Tensor`` → add."""
    return func.overloadpacket.__name__.rstrip("_")


def tensor_leaves(value) -> list[torch.Tensor]:
    """The tensors in a (nested) argument structure."""
    return [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]


def written_arguments(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an op writes into (in-place ops, ``out=`` arguments), from its schema."""
    written = []
    for position, argument in enumerate(func._schema.arguments):
        alias = argument.alias_info
        if alias is None or not alias.is_write:
            continue
        value = args[position] if position < len(args) else kwargs.get(argument.name)
        written += tensor_leaves(value)
    return written


def storage_key(tensor: torch.Tensor) -> int:
    """An id for a tensor's storage (0 for storage-less tensors, which are never shared)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0

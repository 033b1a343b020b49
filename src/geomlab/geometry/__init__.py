"""THE SCIENCE: pure functions and operators on tensors and nn.Modules (see the README's Layout)."""

__all__: list[str] = []

from .flops import count_flops

__all__ = ["count_flops"]

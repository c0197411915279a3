"""FourierFTLinear: y = base(x) + x @ dW^T, dW = scaling * Re(ifft2(S)) with S (out, in) zero
except at n fixed random entries, which hold the trained `fourierft_spectrum` (n,).

The entries are PEFT's: the first n of torch.randperm(out * in) from a generator seeded with
random_loc_seed, entry k at row k // in, column k % in. They are not saved (PEFT regenerates them
too). ifft2 is normalised by 1 / (out * in), so `scaling` is large (about 150).
"""

import torch
from torch import nn

from ...errors import ConfigError
from ..delta_linear import DeltaLinear


class FourierFTLinear(DeltaLinear):
    param_names = ("fourierft_spectrum",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.scaling: dict[str, float] = {}
        self.indices: dict[str, torch.Tensor] = {}  # (2, n): rows, columns of the entries

    def add_adapter(self, name: str, cfg) -> None:
        """Add adapter `name` from a FourierFTConfig, initialised as PEFT does.

        Raises ConfigError when n_frequency exceeds the layer's in * out entries.
        """
        out, inp, n = self.out_features, self.in_features, cfg.n_frequency
        if n > out * inp:
            raise ConfigError(
                f"method.n_frequency={n} exceeds the {out} x {inp} = {out * inp} entries of a "
                f"targeted layer; use n_frequency <= {out * inp}"
            )
        self._start_adapter(name)
        generator = torch.Generator().manual_seed(cfg.random_loc_seed)
        flat = torch.randperm(out * inp, generator=generator)[:n]
        self.indices[name] = torch.stack([flat // inp, flat % inp])  # (2, n)
        spectrum = self._new_param(n)
        with torch.no_grad():
            spectrum.zero_() if cfg.init_weights else spectrum.normal_()
        self.fourierft_spectrum[name] = spectrum
        self.scaling[name] = cfg.scaling
        self.active_adapters = [name]

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)
        self.indices.pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        spectrum = self.fourierft_spectrum[name]
        rows, cols = self.indices[name].to(spectrum.device)
        dense = torch.zeros(self.out_features, self.in_features, device=spectrum.device)
        dense = dense.index_put((rows, cols), spectrum)  # (out, in), differentiable in spectrum
        return torch.fft.ifft2(dense).real * self.scaling[name]

"""Decoded tiles kept by what they were decoded from, so that a second restoration of the same tiles skips the token
path and only runs the fusion head again (under another task, or another trust).

Greedy decoding of a tile is a function of the tile, its first estimate, the decoding options and — in a family
whose token path reads the task (``RestorationModel.token_path_reads_task``: HSI-VAR's transformer takes the task
embedding) — the task weights; in RestoreVAR and VarFormer the weights reach only the fusion head
(:meth:`~hsivar.models.base.RestorationModel.fuse`). The key covers exactly that. The calibration
(:mod:`hsivar.calibrate`) restores every validation example twice, with its true task and blind: where both passes
prepare the same tiles and first estimates (every family but blur on the demo protocol: the blind observation
differs only where a blur width is estimated) — and, for HSI-VAR, weigh the tasks alike (blind ``auto`` among the
one family the observation leaves plausible weighs it 1, as the true task does) — the second pass fuses the first
pass's decoded tiles.
"""

from __future__ import annotations

import hashlib

import torch

DEFAULT_MAX_BYTES = 512 * 2**20
"""What a :class:`DecodedTiles` holds at most; past it, tiles are decoded again rather than kept."""


class DecodedTiles:
    """Decoded tiles (C, S, S) float32 on the CPU in [-1, 1] by a digest of (tile, first estimate, options, task
    weights where the token path reads them).

    The key does not cover the model's parameters: a memo serves one model while its token path's stay as they were
    (the calibration changes only the fusion head's trust between its passes).

    Attributes:
        hits, misses: batches served from the memo / decoded (and kept while room is left).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """An empty memo holding at most ``max_bytes`` of tiles."""
        self.max_bytes = max_bytes
        self._tiles: dict[bytes, torch.Tensor] = {}
        self._bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def keys(tiles01: torch.Tensor, estimate01: torch.Tensor | None, options: str,
             weights: torch.Tensor | None = None) -> list[bytes]:
        """One key per tile of (b, C, S, S) ``tiles01``, ``estimate01`` and the task ``weights`` (b, N) the token path
        reads (None: it reads none) — exact bytes, dtype and shape — under ``options`` (the decoding, guidance and
        refinement as text)."""
        parts = [None if p is None else p.detach().cpu() for p in (tiles01, estimate01, weights)]  # one copy each
        keys = []
        for i in range(tiles01.shape[0]):
            h = hashlib.blake2b(digest_size=20)
            h.update(options.encode())
            for p in parts:
                if p is None:
                    h.update(b"none")
                    continue
                t = p[i].contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes())
            keys.append(h.digest())
        return keys

    def get(self, keys: list[bytes]) -> torch.Tensor | None:
        """The decoded tiles (b, C, S, S) of every key, or None (counted a miss) unless all are held."""
        if not all(k in self._tiles for k in keys):
            self.misses += 1
            return None
        self.hits += 1
        return torch.stack([self._tiles[k] for k in keys])

    def put(self, keys: list[bytes], decoded: torch.Tensor) -> None:
        """Keep decoded tiles (b, C, S, S) under ``keys`` while the memo has room."""
        for k, d in zip(keys, decoded):
            d = d.detach().float().cpu().contiguous()
            if k in self._tiles or self._bytes + d.nbytes > self.max_bytes:
                continue
            self._tiles[k] = d
            self._bytes += d.nbytes

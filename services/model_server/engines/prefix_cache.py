"""KV caches of recent prompts, kept between requests so that a new prompt computes only the
tokens after the longest prefix it shares with one of them.

Every prompt of the ensemble starts with the same system prompt and few-shot demos, and the
prompt of step t+1 of a search extends the prompt of step t; without this cache each call
recomputes all of it. Entries are whole prompts (the token ids and, per layer, their keys and
values for one row); a lookup returns the entry that shares the longest prefix with the new
prompt, and :meth:`PrefixCache.rows` turns hits into a batched ``DynamicCache`` whose rows are
left-padded to a common length (the padding is masked by the caller).

The cache is bounded in tokens, least recently used first out. An entry that is a prefix of a
newly stored prompt is dropped (the new one serves every lookup the old one did), and a prompt
that is a prefix of a kept entry is not stored again. Not thread-safe: the engine touches it
only on its one model thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache


@dataclass(frozen=True)
class Hit:
    """The cached KV of ``length`` leading tokens of a prompt (``length`` 0: none)."""

    length: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


MISS = Hit(0)


@dataclass(eq=False)
class _Entry:
    ids: torch.Tensor  # [tokens], int64 on the CPU
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer [1, heads, tokens, dim]


class PrefixCache:
    """Up to ``max_tokens`` prompt tokens' KV; hits shorter than ``min_tokens`` are ignored
    (so short prompts do not churn it)."""

    def __init__(self, max_tokens: int, *, min_tokens: int = 32) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = max(1, min_tokens)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self.tokens = 0
        self.hit_tokens = 0
        self.lookups = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> Hit:
        """The longest cached prefix of ``ids``, at most ``len(ids) - 1`` tokens (the caller
        must compute at least one token to get logits for what follows)."""
        limit = len(ids) - 1
        if not self.enabled or limit < self.min_tokens:
            return MISS
        self.lookups += 1
        query = torch.tensor(ids[:limit], dtype=torch.long)
        best_key, best_len = None, 0
        for key, entry in self._entries.items():
            n = min(limit, int(entry.ids.shape[0]))
            if n <= best_len:
                continue
            differs = (entry.ids[:n] != query[:n]).nonzero()
            common = int(differs[0]) if differs.numel() else n
            if common > best_len:
                best_key, best_len = key, common
        if best_key is None or best_len < self.min_tokens:
            return MISS
        self._entries.move_to_end(best_key)
        self.hit_tokens += best_len
        entry = self._entries[best_key]
        return Hit(
            best_len, tuple((k[:, :, :best_len], v[:, :, :best_len]) for k, v in entry.layers)
        )

    def store(
        self, ids: Sequence[int], layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Keep the KV of prompt ``ids`` (``layers``: per layer keys and values of ONE row,
        ``[1, heads, len(ids), dim]``; copied, so the caller's tensors stay its own)."""
        n = len(ids)
        if not self.enabled or n < self.min_tokens or n > self.max_tokens:
            return
        new = torch.tensor(list(ids), dtype=torch.long)
        for key, entry in list(self._entries.items()):
            m = int(entry.ids.shape[0])
            if m >= n and torch.equal(entry.ids[:n], new):
                self._entries.move_to_end(key)  # already covered by a longer entry
                return
            if m < n and torch.equal(new[:m], entry.ids):
                self._drop(key)  # the new entry covers this one
        kept = tuple(
            (k[:, :, :n].contiguous().clone(), v[:, :, :n].contiguous().clone()) for k, v in layers
        )
        self._entries[self._next] = _Entry(new, kept)
        self._next += 1
        self.tokens += n
        while self.tokens > self.max_tokens and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.tokens -= int(entry.ids.shape[0])

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0


def rows(hits: Sequence[Hit], width: int) -> DynamicCache | None:
    """One batched cache of ``width`` positions whose row i holds ``hits[i]`` right-aligned
    (left-padded with zeros, which the caller masks). None when no hit has a token."""
    if width == 0:
        return None
    template = next(h for h in hits if h.length)
    data = []
    for layer, (k0, v0) in enumerate(template.layers):
        shape_k = (len(hits), k0.shape[1], width, k0.shape[3])
        shape_v = (len(hits), v0.shape[1], width, v0.shape[3])
        keys = torch.zeros(shape_k, dtype=k0.dtype, device=k0.device)
        values = torch.zeros(shape_v, dtype=v0.dtype, device=v0.device)
        for i, hit in enumerate(hits):
            if hit.length:
                k, v = hit.layers[layer]
                keys[i, :, width - hit.length :] = k[0]
                values[i, :, width - hit.length :] = v[0]
        data.append((keys, values))
    return DynamicCache(ddp_cache_data=data)

"""Sampling priority: a pure 32-bit hash of (salt, feature, ctx_id, pos).

    seed     = fmix32(fmix32(lo32(salt) ^ 0x5BD1E995) ^ hi32(salt))
    ctx_hash = fmix32(fmix32(seed ^ lo32(ctx_id)) ^ hi32(ctx_id))
    tok_hash = fmix32(ctx_hash ^ lo32(pos * 0x27D4EB2F))
    key(f)   = fmix32(lo32((f + 1) * 0x9E3779B1))
    priority = fmix32(tok_hash ^ key(f))

fmix32 is MurmurHash3's finaliser, a bijection of 32-bit words with full avalanche, so
within one feature distinct tokens get independent-looking uniform priorities, and the
bottom-k by priority is a uniform sample without replacement. hi32 is an arithmetic
shift, as in Python, numpy, numba and torch alike. Three identical implementations:
numpy (reference, feature keys), numba (uint32 words) and torch (int64 words masked to
32 bits, multiplication split in 16-bit halves so nothing overflows, also on CUDA).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS

M32 = 0xFFFFFFFF
EMPTY_PRIORITY = 1 << 32  # larger than every real priority
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35
_SALT_MIX, _POS_MUL, _KEY_MUL = 0x5BD1E995, 0x27D4EB2F, 0x9E3779B1


def fmix32_np(h):
    """fmix32 on Python ints or uint64 numpy arrays holding 32-bit words."""
    h = h ^ (h >> 16)
    h = (h * _C1) & M32
    h = h ^ (h >> 13)
    h = (h * _C2) & M32
    return h ^ (h >> 16)


def seed_of(salt: int) -> int:
    """The 32-bit seed derived from a (64-bit) salt."""
    salt = int(salt)
    return fmix32_np(fmix32_np((salt & M32) ^ _SALT_MIX) ^ ((salt >> 32) & M32))


def feature_keys(n_features: int) -> np.ndarray:
    """uint32 [feat]: key(f) for every feature."""
    f = np.arange(n_features, dtype=np.uint64)
    return fmix32_np(((f + np.uint64(1)) * np.uint64(_KEY_MUL)) & np.uint64(M32)).astype(np.uint32)


def priority_np(salt: int, feature, ctx_id, pos) -> np.ndarray:
    """Reference priority (int64) for broadcastable arrays of feature, ctx_id, pos."""
    u = np.uint64
    seed = u(seed_of(salt))
    ctx = np.asarray(ctx_id, dtype=np.int64)
    lo = (ctx & M32).astype(np.uint64)
    hi = ((ctx >> 32) & M32).astype(np.uint64)
    hc = fmix32_np(fmix32_np(seed ^ lo) ^ hi)
    p = (np.asarray(pos, dtype=np.int64) * _POS_MUL & M32).astype(np.uint64)
    ht = fmix32_np(hc ^ p)
    key = feature_keys(int(np.max(feature)) + 1)[np.asarray(feature)].astype(np.uint64)
    return fmix32_np(ht ^ key).astype(np.int64)


# numba: uint32 words; every intermediate is cast back to uint32 (numba widens to 64 bits).
_U13, _U16 = np.uint32(13), np.uint32(16)
_UC1, _UC2 = np.uint32(_C1), np.uint32(_C2)


@njit(**NJIT_OPTIONS)
def fmix32_nb(h):
    h = np.uint32(h ^ (h >> _U16))
    h = np.uint32(h * _UC1)
    h = np.uint32(h ^ (h >> _U13))
    h = np.uint32(h * _UC2)
    return np.uint32(h ^ (h >> _U16))


@njit(**NJIT_OPTIONS)
def context_hash_nb(seed, ctx_id):
    ctx_id = np.int64(ctx_id)  # the state keeps int32 ids: hash them as the int64 they are
    h = fmix32_nb(np.uint32(seed ^ np.uint32(ctx_id & M32)))
    return fmix32_nb(np.uint32(h ^ np.uint32((ctx_id >> 32) & M32)))


@njit(**NJIT_OPTIONS)
def token_hash_nb(ctx_hash, pos):
    return fmix32_nb(np.uint32(ctx_hash ^ np.uint32((pos * _POS_MUL) & M32)))


@njit(**NJIT_OPTIONS)
def priority_nb(seed, key, ctx_id, pos):
    """int64 priority of one token (ctx_id, pos) for the feature of ``key`` (recomputed
    wherever a token is kept without it)."""
    return np.int64(fmix32_nb(np.uint32(token_hash_nb(context_hash_nb(seed, ctx_id), pos) ^ key)))


# torch: int64 tensors holding 32-bit words.
def _mul32_t(h: torch.Tensor, c: int) -> torch.Tensor:
    return ((h & 0xFFFF) * c + (((h >> 16) * c) & 0xFFFF) * 65536) & M32


def fmix32_t(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32_t(h, _C1)
    h = h ^ (h >> 13)
    h = _mul32_t(h, _C2)
    return h ^ (h >> 16)


def token_hash_t(seed: int, ctx_id: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """int64 [tokens]: tok_hash for paired ctx ids and positions."""
    ctx_id = ctx_id.to(torch.int64)
    h = fmix32_t(fmix32_t((ctx_id & M32) ^ seed) ^ ((ctx_id >> 32) & M32))
    return fmix32_t(h ^ ((pos.to(torch.int64) * _POS_MUL) & M32))


def priority_t(tok_hash: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """int64 [tokens, feat] from tok_hash [tokens] and int64 keys [feat]."""
    return fmix32_t(tok_hash[:, None] ^ keys[None, :])


def token_priority_t(seed: int, ctx_id: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """int64: the priority of each token (ctx_id, pos) for the feature of the key beside it
    (broadcast alike), not every token for every feature as priority_t."""
    return fmix32_t(token_hash_t(seed, ctx_id, pos) ^ keys)

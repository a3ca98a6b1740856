"""Training patch stream and evaluation sequence stream over shard sets.

Training (``train_batches``): infinite. Each (rank, worker) draws shards at random with
replacement (resampled) -- from its own disjoint slice of the shard list when there are at least
rank x worker shards, otherwise from all of them -- visits the samples of a drawn shard in random
order, cuts K random P x P patches from every decoded sequence, applies the weak augmentation to
the image and every map together, and passes patches through a shuffle buffer. Several sources
are mixed patch by patch with probability proportional to their weight (RPST's P). The random
stream of worker w on rank r is seeded by (seed, r, w): no two workers repeat each other.

Evaluation (``eval_sequences``): each sequence exactly once over all ranks and workers. Sample i
of the manifest's key list (sorted by key) belongs to slot i mod (world x workers), so it works
for any number of shards, including fewer shards than slots; it never waits on other ranks.

Corrupt shards or members raise ``ValueError`` naming shard and key; with ``on_corrupt="skip"``
the sample (or shard) is skipped, counted and warned about.

Shards are read by whatever ``shards.open_shard`` picks for their location (a local folder: memory
map; a URL: streamed through WebDataset, or copied into ``cache_dir`` once). The samples, their
order and every random draw depend only on the manifest and the seeds, never on the reader, so a
run on remote shards is the run on local ones.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dias_dist import dist
from dias_dist.config import DataConfig

from .augment import weak_params
from . import location
from .folds import split_keys
from .shards import open_shard, split_entry

AUGMENTS = ("none", "weak", "strong")
# The maps a source can train on and what they hold: "dense" = every pixel {0,1} (a label or a
# pseudo label), "scribble" = {0 bg, 1 vessel, 255 unannotated}. A method declares the kind it learns from.
TARGET_KINDS = {"label": "dense", "pseudo": "dense", "scribble_rdfa": "scribble", "scribble_sale": "scribble"}
ON_CORRUPT = ("raise", "skip")


@dataclass
class TrainSource:
    """One shard split feeding the training stream.

    weight: mixing weight (patch probability proportional to it); target: the map that becomes
    ``target``; is_pseudo: flag copied to every patch; num_sequences > 0: only the first N
    sequences by ID; num_folds >= 2: without the held-out fold ``fold`` (``data/folds.py``).
    """

    shard_dir: str
    split: str = "training"
    weight: float = 1.0
    augment: str = "weak"
    target: str = "label"
    is_pseudo: bool = False
    num_sequences: int = 0
    num_folds: int = 0  # >= 2: leave out fold ``fold`` of the sequences (data/folds.py; after the num_sequences cut)
    fold: int = 0
    fold_groups: str = ""

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise ValueError(f"TrainSource augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.target not in TARGET_KINDS:
            raise ValueError(f"data.target={self.target!r} is not a target map; valid: {', '.join(TARGET_KINDS)}")
        if not self.weight > 0:
            raise ValueError(f"TrainSource weight must be > 0, got {self.weight}")

    def shard_keys(self) -> list[tuple[str, list[str], dict]]:
        """[(shard path, keys to use, manifest entry)] after the ``num_sequences`` cut and the fold; empty shards dropped."""
        entry = split_entry(self.shard_dir, self.split)
        keys = sorted(k for s in entry["shards"] for k in s["keys"])
        if self.num_sequences > 0:
            if self.num_sequences > len(keys):
                raise ValueError(f"{self.shard_dir}/{self.split}: num_sequences={self.num_sequences} but only "
                                 f"{len(keys)} sequences")
            keys = keys[:self.num_sequences]
        if self.num_folds:
            keys, _ = split_keys(keys, self.num_folds, self.fold, self.fold_groups)
        wanted = set(keys)
        out = [(location.join(self.shard_dir, s["name"]), [k for k in s["keys"] if k in wanted], s)
               for s in entry["shards"]]
        return [(path, ks, shard) for path, ks, shard in out if ks]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process, as ``dias_dist.dist`` sees them."""
    return dist.rank(), dist.world_size()


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Skips:
    def __init__(self, on_corrupt: str):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"data.on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self.count = 0

    def handle(self, err: ValueError) -> None:
        if self.on_corrupt == "raise":
            raise err
        self.count += 1
        warnings.warn(f"skipped corrupt data ({self.count} so far): {err}", stacklevel=2)


class _ReaderCache:
    """This worker's open shards. Readers come from ``shards.open_shard`` (the one place that picks
    the reader by the location's scheme). Memory-mapped readers stay open; at most ``keep_streamed``
    shards streamed into memory are kept (None: all), the least recently used one is dropped."""

    def __init__(self, skips: _Skips, verify: bool = True, cache_dir: str = "", keep_streamed: int | None = None):
        self.readers: dict = {}
        self.skips = skips
        self.verify = verify
        self.cache_dir = cache_dir
        self.keep_streamed = keep_streamed
        self._streamed: list[tuple] = []  # least recently used first

    def get(self, path: str, entry: dict | None = None, keys=None):
        """The reader of ``path``, checked against its manifest ``entry`` (bytes, keys and, with
        ``verify``, the sha256) when given; None when it failed and ``on_corrupt=skip``. ``keys``:
        the samples a streamed shard keeps in memory (None: all)."""
        # a streamed shard keeps only the samples asked for, so two sources wanting other keys of it need
        # two readers; a memory map (a local path or a cached copy) serves every key: one reader per path
        streamed = not (location.is_local(path) or self.cache_dir)
        slot = (path, None if keys is None else tuple(keys)) if streamed else (path, None)
        if slot in self._streamed:
            self._streamed.remove(slot)
            self._streamed.append(slot)
        if slot not in self.readers:
            try:
                reader = open_shard(path, entry, verify=self.verify, cache_dir=self.cache_dir, keys=keys)
            except ValueError as err:
                self.skips.handle(err)
                reader = None
            self.readers[slot] = reader
            if reader is not None and hasattr(reader, "release"):
                self._streamed.append(slot)
                if self.keep_streamed is not None and len(self._streamed) > self.keep_streamed:
                    self.readers.pop(self._streamed.pop(0))
        return self.readers[slot]


MAPS_CACHED = 256  # decoded target maps kept per worker


def _patches_of(source: TrainSource, shards, rng, cache: _ReaderCache, patch: int, per_sequence: int):
    """Infinite generator of (image float16 (T,P,P), target uint8 (P,P), is_pseudo) from one source.

    Frames are cut straight from the shard's bytes (a memory map, or a streamed shard's memory); decoded target maps are kept in a small
    per-worker cache (they are PNGs, the only per-sequence decode cost).
    """
    strong = None
    if source.augment == "strong":
        from .strong_augment import strong_augment as strong  # only RPST's pseudo-labelled sources need it
    targets_cache: dict[tuple[str, str], np.ndarray] = {}
    failures = 0
    while True:
        path, keys, entry = shards[int(rng.integers(len(shards)))]
        reader = cache.get(path, entry, keys)
        if reader is None:
            failures += 1
            if failures > 100 * len(shards):
                raise ValueError(f"{source.shard_dir}/{source.split}: no readable shard left")
            continue
        for key in rng.permutation(keys):
            try:
                frames = reader.frames(key)
                target = targets_cache.get((path, key))
                if target is None:
                    target = reader.map(key, source.target, frames.shape[1:])
                    if target is None:
                        raise ValueError(f"{path}: sample {key!r} has no member {source.target}.png")
                    if len(targets_cache) >= MAPS_CACHED:
                        targets_cache.pop(next(iter(targets_cache)))
                    targets_cache[(path, key)] = target
            except ValueError as err:
                cache.skips.handle(err)
                failures += 1
                continue
            _, height, width = frames.shape
            if height < patch or width < patch:
                raise ValueError(f"{path}: sample {key!r} is {height}x{width}, smaller than patch {patch}")
            # reference crop: start in [0, H - P - 1] (randint upper bound exclusive)
            tops = rng.integers(0, max(height - patch, 1), per_sequence)
            lefts = rng.integers(0, max(width - patch, 1), per_sequence)
            images = _crops(frames, tops, lefts, patch)  # (K,T,P,P)
            targets = _crops(target, tops, lefts, patch)  # (K,P,P)
            if source.augment != "none":
                images, targets = _weak_views(images, targets, rng)
            for image, tgt in zip(images, targets):
                if strong is not None:
                    image, (tgt,) = strong(image, [tgt], rng)  # float16 in, float32 out (it copies)
                yield image, tgt, source.is_pseudo


def _crops(array_hw: np.ndarray, tops: np.ndarray, lefts: np.ndarray, patch: int) -> np.ndarray:
    """Copies of the P x P windows of ``array_hw`` (..., H, W) at (tops[i], lefts[i]): (K, ..., P, P).

    One fancy-indexing gather over the windows view (no Python loop over the K crops).
    """
    windows = sliding_window_view(array_hw, (patch, patch), axis=(-2, -1))  # (..., H-P+1, W-P+1, P, P) view
    lead = array_hw.ndim - 2
    windows = windows.transpose(lead, lead + 1, *range(lead), lead + 2, lead + 3)  # (H-P+1, W-P+1, ..., P, P)
    return windows[tops, lefts]


def _weak_views(images_ktpp: np.ndarray, targets_kpp: np.ndarray, rng: np.random.Generator):
    """Weak augmentation of K patches, each with its own draw, image and target together, as views.

    images_ktpp (K,T,P,P), targets_kpp (K,P,P) -> (K views (T,P,P), K views (P,P)); nothing is copied:
    the batch's ``np.stack`` is the one copy that moves the elements (cheaper than transforming in
    place and stacking after: one pass over the patch less). Draws ``weak_params(rng, K)`` and gives
    the values of ``augment.apply_weak`` (flip H, flip W, then rot90 by k), written as basic slicing.
    """
    flip_h, flip_w, turns = weak_params(rng, len(images_ktpp))
    images, targets = [], []
    for image, target, fh, fw, k in zip(images_ktpp, targets_kpp, flip_h.tolist(), flip_w.tolist(), turns.tolist()):
        image, target = _DIHEDRAL[fh, fw, k](image), _DIHEDRAL[fh, fw, k](target)
        images.append(image)
        targets.append(target)
    return images, targets


def _dihedral(flip_h: bool, flip_w: bool, k: int):
    """The view function of ``apply_weak(., flip_h, flip_w, k)`` on (..., P, P) arrays, by basic slicing."""
    # rot90 by k of the (H, W) plane after the flips: k=1: flip W then swap; k=2: flip both; k=3: swap then flip W
    fh, fw = flip_h, flip_w
    if k == 2:
        fh, fw = not fh, not fw
    step_h, step_w = (-1 if fh else 1), (-1 if fw else 1)
    if k == 1:
        step_w = -step_w
    if k in (1, 3):
        if k == 3:  # swap first, then flip the new last axis = the old H axis
            step_h = -step_h
        return lambda a: a[..., ::step_h, ::step_w].swapaxes(-2, -1)
    return lambda a: a[..., ::step_h, ::step_w]


_DIHEDRAL = {(fh, fw, k): _dihedral(fh, fw, k) for fh in (False, True) for fw in (False, True) for k in range(4)}


class PatchStream(IterableDataset):
    """Infinite stream of batches (see ``train_batches``); one instance per rank, copied per worker."""

    def __init__(self, sources, batch_size, patch_size, patches_per_sequence, shuffle_buffer, seed, on_corrupt,
                 image_dtype=np.float32, verify=True, cache_dir=""):
        self.image_dtype, self.verify, self.cache_dir = image_dtype, verify, cache_dir
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("train_batches needs at least one TrainSource")
        self.batch_size, self.patch_size = batch_size, patch_size
        self.per_sequence, self.shuffle_buffer = patches_per_sequence, shuffle_buffer
        _Skips(on_corrupt)  # validates the value
        self.seed, self.on_corrupt = seed, on_corrupt
        self.rank, self.world = rank_and_world()
        self.shards = [source.shard_keys() for source in self.sources]
        for source, shards in zip(self.sources, self.shards):
            if not shards:
                raise ValueError(f"{source.shard_dir}/{source.split}: no sequences to train on")

    def __iter__(self):
        worker, num_workers = _worker()
        slot, slots = self.rank * num_workers + worker, self.world * num_workers
        rng = np.random.default_rng([self.seed, self.rank, worker])
        skips = _Skips(self.on_corrupt)
        # a streamed shard is read whole at each draw; one per source is kept for the next draw
        cache = _ReaderCache(skips, self.verify, self.cache_dir, keep_streamed=len(self.sources))
        streams = []
        for source, shards in zip(self.sources, self.shards):
            mine = shards[slot::slots] if len(shards) >= slots else shards
            streams.append(_patches_of(source, mine, rng, cache, self.patch_size, self.per_sequence))
        weights = np.array([s.weight for s in self.sources], dtype=float)
        weights /= weights.sum()
        buffer: list = []
        batch: list = []
        while True:
            which = int(rng.choice(len(streams), p=weights)) if len(streams) > 1 else 0
            item = next(streams[which])
            if self.shuffle_buffer > 0:
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(item)
                    continue
                j = int(rng.integers(len(buffer)))
                item, buffer[j] = buffer[j], item
            batch.append(item)
            if len(batch) == self.batch_size:
                # torch's float16 -> float32 cast is ~2x faster than numpy's (the loader's largest cost)
                image = torch.from_numpy(np.stack([b[0] for b in batch]))
                yield {"image": image.to(torch.float32 if self.image_dtype == np.float32 else torch.float16),
                       "target": torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64)),
                       "is_pseudo": torch.tensor([b[2] for b in batch], dtype=torch.bool)}
                batch = []


def train_batches(sources, *, batch_size: int, patch_size: int = 64, patches_per_sequence: int = 64,
                  shuffle_buffer: int = 2048, num_workers: int = 2, seed: int = 0, on_corrupt: str = "raise",
                  image_dtype: str = "float32", verify: bool = True, cache_dir: str = ""):
    """Infinite iterable of training batches on this rank.

    Yields {"image": float32 (B, T, P, P), "target": int64 (B, P, P), "is_pseudo": bool (B,)} with
    B = ``batch_size`` patches per batch on this rank. ``sources``: TrainSource or a list of them.
    ``image_dtype="float16"`` skips the float16 -> float32 conversion on the CPU (the shards hold
    float16; converting on the GPU is free); it is the largest single cost of the loader.
    ``verify``: check each shard's sha256 against the manifest before its first use in each process
    (a streamed remote shard: at every download). ``cache_dir``: keep a local copy of remote shards
    there (``shards.open_shard``).
    """
    if image_dtype not in ("float32", "float16"):
        raise ValueError(f"train_batches: image_dtype must be float32 or float16, got {image_dtype!r}")
    if isinstance(sources, TrainSource):
        sources = [sources]
    if batch_size < 1 or patch_size < 1 or patches_per_sequence < 1 or shuffle_buffer < 0 or num_workers < 0:
        raise ValueError(f"train_batches: bad sizes batch_size={batch_size} patch_size={patch_size} "
                         f"patches_per_sequence={patches_per_sequence} shuffle_buffer={shuffle_buffer} "
                         f"num_workers={num_workers}")
    stream = PatchStream(sources, batch_size, patch_size, patches_per_sequence, shuffle_buffer, seed, on_corrupt,
                         np.dtype(image_dtype), verify, cache_dir)
    if num_workers == 0:
        return stream
    return _Reraising(DataLoader(_CarryErrors(stream), batch_size=None, num_workers=num_workers,
                                 persistent_workers=True, prefetch_factor=4))


_ERROR = "__dias_loader_error__"


class _CarryErrors(IterableDataset):
    """Runs ``dataset`` in a DataLoader worker; a ValueError (a data fault naming file and key)
    travels to the main process as an item instead of being wrapped by torch into "Caught ValueError
    in DataLoader worker process 0" plus the worker's traceback."""

    def __init__(self, dataset: IterableDataset):
        self.dataset = dataset

    def __iter__(self):
        try:
            yield from self.dataset
        except ValueError as err:
            yield {_ERROR: str(err)}


class _Reraising:
    """Iterable over a DataLoader of ``_CarryErrors``: re-raises a worker's ValueError with its own
    message (the first line the user sees)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self):
        for item in self.loader:
            if isinstance(item, dict) and _ERROR in item:
                raise ValueError(item[_ERROR])
            yield item


class SequenceStream(IterableDataset):
    """Whole sequences of one split, each exactly once across ranks x workers (see module doc)."""

    def __init__(self, shard_dir, split, on_corrupt="raise", keys: set[str] | None = None, cache_dir: str = "",
                 verify: bool = True):
        _Skips(on_corrupt)  # validates the value
        entry = split_entry(shard_dir, split)
        self.entries = {location.join(shard_dir, s["name"]): s for s in entry["shards"]}
        self.items = sorted((k, location.join(shard_dir, s["name"])) for s in entry["shards"] for k in s["keys"]
                            if keys is None or k in keys)
        self.on_corrupt, self.cache_dir, self.verify = on_corrupt, cache_dir, verify
        self.rank, self.world = rank_and_world()

    def items_of(self, worker: int, num_workers: int) -> list[tuple[str, str]]:
        """(key, shard path) pairs of one worker of this rank: sorted-key index mod world x workers."""
        slots = self.world * num_workers
        return self.items[self.rank * num_workers + worker::slots]

    def __iter__(self):
        worker, num_workers = _worker()
        skips = _Skips(self.on_corrupt)
        cache = _ReaderCache(skips, self.verify, self.cache_dir)
        mine = self.items_of(worker, num_workers)
        wanted: dict[str, list[str]] = {}  # a streamed shard keeps only this worker's samples
        for key, path in mine:
            wanted.setdefault(path, []).append(key)
        for key, path in mine:
            reader = cache.get(path, self.entries[path], wanted[path])
            if reader is None:
                continue
            try:
                sample = reader.decode(key)
            except ValueError as err:
                skips.handle(err)
                continue
            finally:
                if hasattr(reader, "release"):
                    reader.release(key)  # each sample is read once: free its bytes
            label, fov = sample.get("label"), sample.get("fov")
            meta = sample["meta"]
            yield {"key": key, "id": int(meta.get("id", int(key[1:]))),
                   "image": torch.from_numpy(sample["frames"].astype(np.float32)),
                   "label": None if label is None else torch.from_numpy(label),
                   "fov": None if fov is None else torch.from_numpy(fov), "meta": meta}


class EvalSequences:
    """What ``eval_sequences`` returns: iterable of this rank's sequences; ``len()`` is their count."""

    def __init__(self, stream: SequenceStream, num_workers: int):
        self.stream, self.num_workers = stream, num_workers

    def __iter__(self):
        if self.num_workers == 0:
            return iter(self.stream)
        return iter(_Reraising(DataLoader(_CarryErrors(self.stream), batch_size=None, num_workers=self.num_workers,
                                          collate_fn=_as_is)))

    def __len__(self) -> int:
        workers = max(self.num_workers, 1)
        return sum(len(self.stream.items_of(worker, workers)) for worker in range(workers))


def eval_sequences(shard_dir, split, *, num_workers: int = 1, on_corrupt: str = "raise",
                   keys: set[str] | None = None, cache_dir: str = "", verify: bool = True) -> EvalSequences:
    """Iterable of {"key", "id", "image": float32 (T, H, W), "label": uint8 (H, W) or None, "fov": uint8
    {0,1} (H, W) field of view or None, "meta"}.

    Each sequence of ``split`` (only those in ``keys`` when given; others are not decoded) appears
    exactly once over all ranks and workers; this rank gets the samples of its slots (sorted-key
    index mod world x workers). ``len()`` is this rank's count (for progress bars). ``shard_dir`` is
    a folder or a URL (``location.py``); ``cache_dir`` and ``verify`` as in ``train_batches``.
    """
    return EvalSequences(SequenceStream(shard_dir, split, on_corrupt, keys, cache_dir, verify), num_workers)


def _as_is(sample: dict) -> dict:
    """Collate function of the evaluation stream: samples pass through unchanged (meta stays a dict)."""
    return sample


# --------------------------------------------------------------------------------------------
# what the trainer asks of the loader


def derived_seed(seed: int, *parts: int) -> int:
    """Deterministic 63-bit seed from ``seed`` and integer parts (rank, step...)."""
    digest = hashlib.sha256(json.dumps([int(seed), *map(int, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def default_sources(cfg: DataConfig) -> list[TrainSource]:
    """The training source described by the ``data`` section (labelled training split; without the held-out
    fold under ``data.num_folds``)."""
    return [TrainSource(cfg.shards, split="training", augment=cfg.augment, target=cfg.target,
                        num_sequences=cfg.num_labeled, num_folds=cfg.num_folds, fold=cfg.fold,
                        fold_groups=cfg.fold_groups)]


def fold_eval_split(cfg: DataConfig, split: str) -> tuple[str, set[str] | None]:
    """(split, keys) to evaluate for the trainer's ``split``: with ``data.num_folds`` the ``validation``
    split becomes this fold's held-out training sequences (``data/folds.py``); otherwise ``(split, None)``."""
    if split != "validation" or not cfg.num_folds:
        return split, None
    keys = [k for _, ks, _ in TrainSource(cfg.shards, num_sequences=cfg.num_labeled).shard_keys() for k in ks]
    _, held_out = split_keys(keys, cfg.num_folds, cfg.fold, cfg.fold_groups)
    return "training", set(held_out)


def check_targets(method, sources: list[TrainSource]) -> None:
    """ValueError when a source's map does not suit ``method.target_kind`` (silently wrong training otherwise)."""
    for source in sources:
        kind = TARGET_KINDS[source.target]
        if kind != method.target_kind:
            valid = [t for t, k in TARGET_KINDS.items() if k == method.target_kind]
            raise ValueError(f"method {type(method).__name__} learns from {method.target_kind} targets but "
                             f"data.target={source.target!r} is {kind}; use one of {', '.join(valid)}")


def train_stream(cfg: DataConfig, sources: list[TrainSource], *, micro_batch: int, seed: int, step: int):
    """Infinite iterator of micro-batches for this rank from (``seed``, ``step``); rank and worker are
    mixed in below, so a run resumed at ``step`` sees exactly the patches the uninterrupted run saw."""
    return iter(train_batches(sources, batch_size=micro_batch, patch_size=cfg.patch_size_px,
                              patches_per_sequence=cfg.patches_per_sequence, shuffle_buffer=cfg.shuffle_buffer,
                              num_workers=cfg.num_workers, seed=derived_seed(seed, step) % (2**31),
                              on_corrupt=cfg.on_corrupt, verify=cfg.verify, cache_dir=cfg.cache_dir))

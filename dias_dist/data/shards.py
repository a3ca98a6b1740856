"""WebDataset tar shards of preprocessed sequences + a manifest.

Layout (``shards/README.md`` documents the sample schema)::

    OUT/manifest.json
    OUT/{split}/{split}-000000.tar ...

One sample per sequence, key ``s{ID:05d}``, members ``frames.npy`` (float16 (8, H, W), resampled
and z-scored by ``preprocess.preprocess_sequence``), ``label.png`` (0/255), ``scribble_rdfa.png`` /
``scribble_sale.png`` ({0, 1, 255}) when present, ``meta.json``. No pickles. Tar headers are
normalised (mtime 0, uid/gid 0, no names), so the same input gives byte-identical shards.

Reading: ``open_shard`` is the one place that picks the reader, by the location's scheme
(``location.py``). A local shard: ``ShardReader`` indexes the tar once and decodes members straight
from a memory map (``frames.npy`` is a zero-copy float16 view), so cutting patches touches only the
patch bytes. A URL (http(s), s3, gs, file, pipe:): ``StreamedShard`` streams it through WebDataset
(gopen + its tar iterator) into memory, checking byte count and sha256 against the manifest before
any sample is used; with a cache folder it is copied there once (WebDataset's FileCache) and read
by ``ShardReader``. Both decode through ``_Samples``, so they give the same arrays and the same
errors. Every structural fault raises ``ValueError`` naming the shard and the key.
"""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
import shutil
import tarfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from ..run.atomic import atomic_write
from ..progress import bar
from . import dias, location
from .preprocess import PARAMS, preprocess_sequence

MANIFEST = "manifest.json"
FORMAT = "dias_dist-shards-v1"
BINARY_MAPS = ("label", "pseudo", "fov")  # stored 0/255, decoded to {0, 1}
KEY_PATTERN = re.compile(r"s[0-9]{1,12}")  # what ``sample_key`` writes; keys become output file names


def sample_key(seq_id: int) -> str:
    return f"s{int(seq_id):05d}"


def check_key(key, where: str) -> str:
    """``key`` when it looks like ``sample_key`` output (``s`` + digits), else ValueError naming ``where``.

    Keys end up in output paths (``prob/<key>.npy``); a crafted shard must never direct a write
    outside the output folder (``/424242``, ``../x``)."""
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        raise ValueError(f"{where}: sample key {key!r} is not 's' followed by digits (as `dias shard` writes)")
    return key


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def png_bytes(array_hw_uint8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array_hw_uint8, dtype=np.uint8), mode="L").save(buffer, format="PNG",
                                                                                         compress_level=1)
    return buffer.getvalue()


def sequence_sample(seq: dias.Sequence) -> dict:
    """A read sequence -> a shard sample dict (``__key__`` + member name -> array or dict, encoded by
    ``write_samples``: npy frames, PNG maps (label 0/255, scribbles raw {0, 1, 255}), JSON meta)."""
    frames, meta = preprocess_sequence(seq.frames)
    meta.update(split=seq.split, id=seq.seq_id, height=int(frames.shape[1]), width=int(frames.shape[2]),
                source=seq.source)
    sample = {"__key__": sample_key(seq.seq_id), "frames.npy": frames}
    if seq.label is not None:
        sample["label.png"] = seq.label * 255
    for name, scribble in sorted(seq.scribbles.items()):
        sample[f"scribble_{name}.png"] = scribble
    if seq.fov is not None:
        sample["fov.png"] = seq.fov * 255
    sample["meta.json"] = meta
    return sample


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# Shards this process has hashed and found as the manifest says: (real path, size, mtime_ns, sha256).
# Hashing runs at ~0.6 GB/s against ~3-5 GB/s for reading a cached file (docs/DECISIONS.md,
# "Shard verification"), so every shard is hashed once per process, at its first use, not per read.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def verify_shard(path: str | Path, sha256: str) -> None:
    """ValueError naming ``path`` unless its sha256 is ``sha256``; a file already verified by this
    process (same size and modification time) is not hashed again."""
    stat = os.stat(path)
    token = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, sha256)
    if token in _VERIFIED:
        return
    actual = _sha256(Path(path))
    if actual != sha256:
        raise ValueError(f"{path}: sha256 is {actual[:16]}..., the manifest says {str(sha256)[:16]}... (the shard "
                         f"changed after it was written; re-run `dias shard`, or set data.verify=false to use it "
                         f"as it is)")
    _VERIFIED.add(token)


def _member_bytes(sample: dict) -> Iterator[tuple[str, bytes]]:
    for name, value in sample.items():
        if name == "__key__":
            continue
        if isinstance(value, np.ndarray):
            value = npy_bytes(value) if name.endswith(".npy") else png_bytes(value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True).encode()
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"sample {sample.get('__key__')!r}: member {name!r} must be bytes, ndarray or dict")
        if name.endswith((".pyd", ".pickle", ".pkl")):
            raise ValueError(f"sample {sample.get('__key__')!r}: member {name!r}: pickles are not allowed")
        yield name, bytes(value)


def write_samples(samples: Iterable[dict], out_dir: str | Path, split: str, *, num_samples: int | None = None,
                  shard_size_mb: float = 256, min_shards: int = 1, provenance: dict | None = None,
                  manifest_fields: dict | None = None) -> dict:
    """Write ``samples`` (dicts: ``__key__`` + member name -> bytes / ndarray / dict) as tar shards of ``split``.

    A new shard starts when the current one would pass ``shard_size_mb`` or holds its share of
    ``num_samples`` / ``min_shards`` (``num_samples`` is required when ``min_shards`` > 1). The
    split entry (shards with sha256, sizes and keys; ``provenance``) and the top-level
    ``manifest_fields`` are merged into ``out_dir/manifest.json``, which is returned.
    """
    out_dir = Path(out_dir)
    if min_shards < 1 or shard_size_mb <= 0:
        raise ValueError(f"min_shards must be >= 1 and shard_size_mb > 0, got {min_shards}, {shard_size_mb}")
    if min_shards > 1 and num_samples is None:
        raise ValueError("write_samples: min_shards > 1 needs num_samples")
    per_shard = -(-num_samples // min_shards) if num_samples else None
    limit = int(shard_size_mb * 2 ** 20)
    split_dir = out_dir / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for old in split_dir.glob(f"{split}-*.tar"):
        old.unlink()
    shards: list[dict] = []
    tar, size, keys, seen = None, 0, [], set()

    def close():
        tar.close()
        path = split_dir / shards[-1]["name"].split("/")[-1]
        shards[-1].update(sha256=_sha256(path), bytes=path.stat().st_size, keys=list(keys))

    for sample in samples:
        key = check_key(sample.get("__key__"), f"split {split}")
        if key in seen:
            raise ValueError(f"split {split}: duplicate sample key {key!r}")
        seen.add(key)
        members = list(_member_bytes(sample))
        sample_size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        if tar is None or (keys and (size + sample_size > limit or (per_shard and len(keys) >= per_shard))):
            if tar is not None:
                close()
            name = f"{split}-{len(shards):06d}.tar"
            tar = tarfile.open(split_dir / name, "w", format=tarfile.USTAR_FORMAT)
            shards.append({"name": f"{split}/{name}"})
            size, keys = 0, []
        for name, data in members:
            _add_member(tar, f"{key}.{name}", data)
        size += sample_size
        keys.append(key)
    if tar is not None:
        close()
    if not shards:
        raise ValueError(f"split {split}: no samples to write")
    manifest = read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else {"format": FORMAT, "splits": {}}
    manifest["splits"][split] = {"num_samples": len(seen), "num_shards": len(shards), "shards": shards,
                                 "provenance": provenance or {}}
    manifest.update(manifest_fields or {})
    write_manifest(out_dir, manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Atomically write ``out_dir/manifest.json``."""
    with atomic_write(out_dir / MANIFEST) as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True))


def _carry_over(old_dir: Path, new_dir: Path, rewritten: list[str], drop_others: bool) -> None:
    """Bring what a partial re-shard does not rewrite from ``old_dir`` into ``new_dir``: the other
    splits (tars hard-linked where the file system allows, else copied; manifest entries merged)
    and any other file. ``drop_others``: splits the source no longer has are left out (a whole
    data set was re-sharded; keeping them would train or evaluate on stale data)."""
    old_manifest = read_manifest(old_dir) if (old_dir / MANIFEST).is_file() else {"splits": {}}
    manifest = read_manifest(new_dir)
    for split, entry in sorted(old_manifest["splits"].items()):
        if split in rewritten:
            continue
        if drop_others:
            warnings.warn(f"{old_dir}: split {split!r} is not in the new source; its old shards are dropped")
            continue
        manifest["splits"][split] = entry
    skip = {MANIFEST, *rewritten, *(s for s in old_manifest["splits"] if s not in manifest["splits"])}
    for item in sorted(old_dir.iterdir()):
        if item.name in skip:
            continue
        target = new_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(item, target)
    write_manifest(new_dir, manifest)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_in(stage: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the complete folder ``stage`` (two renames on one file system; the old
    set is deleted only after the new one is in place)."""
    if not out_dir.exists():
        stage.rename(out_dir)
        return
    retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(retired)
    try:
        stage.rename(out_dir)
    except OSError:
        retired.rename(out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_shards(src_root: str | Path, out_dir: str | Path, shard_size_mb: float = 256, min_shards: int = 1,
                 splits: Iterable[str] | None = None, progress: bool | None = None) -> dict:
    """Shard every split of a release-layout folder (``splits=None``: every split folder present).

    All or nothing: the new set is written into ``.<name>.partial-<pid>`` beside ``out_dir`` and
    swapped in only when every split is complete; any failure removes that folder and leaves an
    existing set and its manifest untouched. Splits not named in ``splits`` are carried over from
    the existing set; with ``splits=None`` splits the source no longer has are dropped (warned).
    ``progress``: a bar per split over its sequences (None: only on a terminal).
    """
    if not location.is_local(out_dir):
        raise ValueError(f"{out_dir}: `dias shard` writes a local folder; write it there, then copy the folder to "
                         f"{out_dir}, manifest.json last (e.g. `aws s3 cp --recursive`; README, 'Shards from "
                         f"anywhere')")
    src_root, out_dir = Path(src_root), Path(out_dir)
    whole = splits is None
    if whole:
        splits = [s for s in dias.SPLITS if dias.split_dir(src_root, s).is_dir()]
        if not splits:
            raise ValueError(f"{src_root}: no split folders ({', '.join(dias.SPLITS[:3])}, unlabeled_DSA)")
    splits = list(splits)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    files = {split: dias.list_sequences(src_root, split) for split in splits}  # layout faults before any write
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for split in splits:
            samples = (sequence_sample(dias.read_sequence(f))
                       for f in bar(files[split], desc=f"shard {split}", unit="seq", enabled=progress))
            write_samples(samples, stage, split, num_samples=len(files[split]), shard_size_mb=shard_size_mb,
                          min_shards=min_shards, provenance={"source": str(src_root.resolve())},
                          manifest_fields={"preprocessing": PARAMS, "source": str(src_root.resolve())})
        if out_dir.is_dir():
            _carry_over(out_dir, stage, splits, drop_others=whole)
        _swap_in(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return read_manifest(out_dir)


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a shard set (a folder or a URL, ``location.py``); ValueError naming the file
    when missing or malformed."""
    path = location.join(shard_dir, MANIFEST)
    if location.is_local(shard_dir):
        if not Path(shard_dir).exists():
            raise ValueError(f"{shard_dir}: no shard set there (moved or deleted?); give its new place with "
                             f"data.shards=NEW_PLACE, or write one with `dias shard SRC {shard_dir}`")
        if not Path(path).is_file():
            raise ValueError(f"{path}: no shard manifest (write one with `dias shard SRC {shard_dir}`)")
        text = Path(path).read_text()
    else:
        try:
            text = location.read_bytes(path).decode("utf-8", errors="replace")
        except OSError as err:
            if "data.read_timeout_s" in str(err) or "data.download_budget_s" in str(err):  # timeouts.py
                raise ValueError(f"{path}: no shard manifest could be read ({err})") from None
            raise ValueError(f"{path}: no shard manifest could be read ({err}); upload the folder "
                             f"`dias shard` wrote, manifest.json last (README, 'Shards from anywhere')") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("splits"),
                                                                                            dict):
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    return manifest


def split_entry(shard_dir: str | Path, split: str) -> dict:
    """The manifest entry of ``split``: shard names (checked: names `dias shard` writes), keys, sizes, sha256."""
    manifest = read_manifest(shard_dir)
    where = location.join(shard_dir, MANIFEST)
    if split not in manifest["splits"]:
        raise ValueError(f"{where}: no split {split!r}; has {', '.join(manifest['splits'])}")
    entry = manifest["splits"][split]
    for shard in entry.get("shards", []):
        location.join(where, shard.get("name"))  # ValueError for a name that is not a relative shard path
        for key in shard.get("keys", []):
            check_key(key, f"{where}: split {split!r} shard {shard.get('name')!r}")
    return entry


def shard_urls(shard_dir: str | Path, split: str) -> list[str]:
    """Locations (paths or URLs) of the shards of ``split`` in manifest order."""
    return [location.join(shard_dir, s["name"]) for s in split_entry(shard_dir, split)["shards"]]


def verify_shards(shard_dir: str | Path) -> None:
    """Check every shard's sha256 against the manifest of a local folder; ValueError naming the first
    mismatch (shards at a URL are checked as they are read, ``data.verify``)."""
    if not location.is_local(shard_dir):
        raise ValueError(f"verify_shards reads a local shard folder, not {shard_dir}; shards at a URL are "
                         "checked as they are read (data.verify)")
    for split, entry in read_manifest(shard_dir)["splits"].items():
        for shard in entry["shards"]:
            path = Path(shard_dir) / shard["name"]
            if not path.is_file() or _sha256(path) != shard["sha256"]:
                raise ValueError(f"{path}: missing or sha256 differs from {Path(shard_dir) / MANIFEST}")


class _Samples:
    """Decoding of the samples of one shard, whatever holds its bytes (``members`` of a subclass).

    ``keys``: sample keys in tar order. ``members(key)``: member name -> bytes-like (zero copy).
    ``decode(key)``: dict with ``frames`` float16 (8, H, W) view, binary maps uint8 {0,1}
    (``label``, ``pseudo``), scribbles uint8 {0,1,255}, ``meta`` dict, ``key``, ``shard``.
    Every fault is a ValueError naming the shard and the key.
    """

    path: str
    keys: list[str]

    def members(self, key: str) -> dict:
        raise NotImplementedError

    def frames(self, key: str) -> np.ndarray:
        """float16 (8, H, W) zero-copy view of ``key``'s frames.npy."""
        members = self.members(key)
        try:
            if "frames.npy" not in members:
                raise ValueError("member frames.npy is missing")
            frames = _npy_view(members["frames.npy"])
            if frames.ndim != 3:
                raise ValueError(f"frames.npy has shape {frames.shape}, expected (T, H, W)")
        except Exception as err:  # noqa: BLE001 - every decode fault becomes one message naming shard and key
            raise ValueError(f"{self.path}: sample {key!r}: corrupt member frames.npy "
                             f"({type(err).__name__}: {err})") from None
        return frames

    def map(self, key: str, name: str, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Decoded ``name``.png of ``key`` (uint8 (H, W); binary maps -> {0,1}), or None if absent."""
        members = self.members(key)
        data = members.get(f"{name}.png")
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert("L"))
            if size is not None and array.shape != tuple(size):
                raise ValueError(f"size {array.shape} differs from frames {tuple(size)}")
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{self.path}: sample {key!r}: corrupt member {name}.png "
                             f"({type(err).__name__}: {err})") from None
        return (array >= 128).astype(np.uint8) if name in BINARY_MAPS else array

    def meta(self, key: str) -> dict:
        data = self.members(key).get("meta.json")
        try:
            return json.loads(bytes(data)) if data is not None else {}
        except ValueError as err:
            raise ValueError(f"{self.path}: sample {key!r}: corrupt member meta.json ({err})") from None

    def decode(self, key: str) -> dict:
        """Every member of ``key``: frames, meta, and each PNG map under its stem name."""
        frames = self.frames(key)
        out = {"key": key, "shard": self.path, "frames": frames, "meta": self.meta(key)}
        for name in self.members(key):
            stem, _, ext = name.rpartition(".")
            if ext == "png":
                out[stem] = self.map(key, stem, frames.shape[1:])
        return out


def _split_member(path: str, name: str) -> tuple[str, str]:
    """(key, member) of the tar entry ``name``; ValueError naming ``path`` unless it is KEY.MEMBER."""
    key, _, member = name.partition(".")
    if not member:
        raise ValueError(f"{path}: tar entry {name!r} is not KEY.MEMBER")
    check_key(key, f"{path}: tar entry {name!r}")
    return key, member


def _missing_keys(path: str, found, expected_keys: list[str] | None) -> None:
    for key in expected_keys or []:
        if key not in found:
            raise ValueError(f"{path}: sample {key!r} listed in the manifest is missing from the shard")


class ShardReader(_Samples):
    """Random access to the samples of one local tar shard through a memory map (``_Samples``)."""

    def __init__(self, path: str | Path, expected_bytes: int | None = None, expected_keys: list[str] | None = None,
                 expected_sha256: str | None = None):
        self.path = str(path)
        self._index: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            file_size = Path(path).stat().st_size
            if expected_bytes is not None and file_size != expected_bytes:
                raise ValueError(f"{path}: shard is {file_size} bytes, the manifest says {expected_bytes} "
                                 f"(truncated or replaced)")
            if expected_sha256 is not None:
                verify_shard(path, expected_sha256)
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, member = _split_member(self.path, info.name)
                    if info.offset_data + info.size > file_size:
                        raise ValueError(f"{path}: key {key!r} member {member!r} is truncated")
                    self._index.setdefault(key, {})[member] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt or unreadable tar shard ({type(err).__name__}: {err})") from None
        _missing_keys(self.path, self._index, expected_keys)
        with open(path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if file_size else b""
        self.keys = list(self._index)

    def members(self, key: str) -> dict[str, memoryview]:
        if key not in self._index:
            raise ValueError(f"{self.path}: no sample with key {key!r}")
        view = memoryview(self._map)
        return {name: view[offset:offset + size] for name, (offset, size) in self._index[key].items()}


class _Hashing:
    """A read-only stream that counts and (optionally) hashes every byte read through it."""

    def __init__(self, stream, hashed: bool):
        self.stream, self.size = stream, 0
        self.digest = hashlib.sha256() if hashed else None

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.size += len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class StreamedShard(_Samples):
    """The samples of one shard read front to back from a URL through WebDataset
    (``webdataset.gopen`` opens it, ``webdataset.tariterators.tar_file_iterator`` walks the tar) and
    held in memory: only the members of ``keys`` (None: every key) are kept.

    Byte count and sha256 of the whole stream are checked against the manifest before any sample
    can be used, so a remote shard gives exactly the guarantees of a verified local one.
    ``release(key)`` drops a sample that will not be read again (the evaluation stream)."""

    def __init__(self, url: str, expected_bytes: int | None = None, expected_keys: list[str] | None = None,
                 expected_sha256: str | None = None, keys=None):
        from webdataset.tariterators import tar_file_iterator

        self.path = str(url)
        wanted = None if keys is None else set(keys)
        self._samples: dict[str, dict[str, bytes]] = {}
        found: set[str] = set()
        failure = None
        try:
            raw = location.open_url(self.path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{url}: unreadable shard ({location.reason(err)})") from None
        stream = _Hashing(raw, expected_sha256 is not None)
        try:
            for item in tar_file_iterator(stream, skip_meta=None):
                key, member = _split_member(self.path, item["fname"])
                found.add(key)
                if wanted is None or key in wanted:
                    self._samples.setdefault(key, {})[member] = item["data"]
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            failure = err
        try:
            stream.drain()  # the end-of-archive blocks (and after a fault, the rest) count in size and sha256
        except (OSError, ValueError) as err:
            failure = failure or err
        try:
            raw.close()
        except (OSError, ValueError) as err:  # curl / gsutil / the pipe command failed
            raise ValueError(f"{url}: unreadable shard ({location.reason(err)})") from None
        if expected_bytes is not None and stream.size != expected_bytes:
            raise ValueError(f"{url}: shard is {stream.size} bytes, the manifest says {expected_bytes} "
                             f"(truncated or replaced)")
        if stream.digest is not None and stream.digest.hexdigest() != expected_sha256:
            raise ValueError(f"{url}: sha256 is {stream.digest.hexdigest()[:16]}..., the manifest says "
                             f"{str(expected_sha256)[:16]}... (the shard changed after it was written; re-run "
                             f"`dias shard`, or set data.verify=false to use it as it is)")
        if failure is not None:
            if isinstance(failure, ValueError) and str(failure).startswith(self.path):
                raise failure
            message = str(failure).split(" @ ")[0]  # tar_file_iterator appends " @ <stream>"
            raise ValueError(f"{url}: corrupt or unreadable tar shard ({type(failure).__name__}: {message})") from None
        _missing_keys(self.path, found, expected_keys)
        self.keys = list(self._samples)

    def members(self, key: str) -> dict[str, bytes]:
        if key not in self._samples:
            raise ValueError(f"{self.path}: no sample with key {key!r}")
        return self._samples[key]

    def release(self, key: str) -> None:
        self._samples.pop(key, None)


def cached_copy(url: str, cache_dir: str | Path, entry: dict | None = None) -> str:
    """The local path of ``url`` in ``cache_dir``, downloaded first if absent, by WebDataset's
    ``FileCache`` (gopen to a temporary name, renamed when complete; tar format checked). There is no
    lock between processes: ranks and workers that miss the same shard at the same moment each
    download it, and the last rename wins (the copies are identical).

    Cache names are content-addressed: the manifest's sha256 of the shard (else a hash of the URL)
    and the shard's file name, so sets that share file names (``training-000000.tar``) never
    collide and a re-sharded set is downloaded again."""
    from webdataset.cache import FileCache

    entry = entry or {}
    digest = entry.get("sha256") or hashlib.sha256(url.encode()).hexdigest()
    base = str(entry.get("name") or "shard.tar").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{str(digest)[:32]}-{base}")
    location.register_s3()  # FileCache downloads through gopen (its handlers under timeouts.py's limits)
    try:
        return FileCache(str(cache_dir), url_to_name=lambda _url: name).get_file(url)
    except (OSError, ValueError, AssertionError) as err:
        raise ValueError(f"{url}: could not be copied into data.cache_dir={cache_dir} "
                         f"({location.reason(err)})") from None


def open_shard(path: str, entry: dict | None = None, *, verify: bool = True, cache_dir: str | Path = "",
               keys=None) -> _Samples:
    """THE choice of shard reader, by the location's scheme (``location.py``):

    - a local path: ``ShardReader``, memory-mapped, zero copy;
    - a URL (not file://) with ``cache_dir``: downloaded once into ``cache_dir`` (``cached_copy``, WebDataset's
      FileCache), then the memory-mapped ``ShardReader`` on the copy (a copy that fails its checks
      is deleted, so the next use downloads it again);
    - a URL without: ``StreamedShard``, streamed through WebDataset into memory (``keys`` only).

    ``entry`` is the shard's manifest entry: its byte count and keys are checked, and with
    ``verify`` its sha256 (once per process for a file, at every download for a stream).
    """
    entry = entry or {}
    expected = (entry.get("bytes"), entry.get("keys"), entry.get("sha256") if verify else None)
    if location.is_local(path):
        return ShardReader(path, *expected)
    if cache_dir and location.scheme(path) != "file":
        copy = cached_copy(path, cache_dir, entry)
        try:
            reader = ShardReader(copy, *expected)
        except ValueError as err:
            Path(copy).unlink(missing_ok=True)  # a copy in cache_dir, never the source
            raise ValueError(f"{path}: its copy in data.cache_dir failed the manifest's checks and was deleted "
                             f"({err})") from None
        reader.path = f"{path} (cached as {copy})"
        return reader
    return StreamedShard(path, *expected, keys=keys)


def _npy_view(data: memoryview) -> np.ndarray:
    """Zero-copy array from .npy bytes; refuses object dtypes (no pickles) and short data."""
    header = io.BytesIO(bytes(data[:1024]))
    version = np.lib.format.read_magic(header)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(header)
    if dtype.hasobject:
        raise ValueError("object arrays (pickles) are not allowed")
    count = int(np.prod(shape))
    offset = header.tell()
    if offset + count * dtype.itemsize != len(data):
        raise ValueError(f"npy payload has {len(data) - offset} bytes, shape {shape} {dtype} needs "
                         f"{count * dtype.itemsize}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")

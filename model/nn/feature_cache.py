"""Frozen-backbone features kept on disk, so that no image goes through the same frozen layers twice.

Every model starts from the same pretrained backbone, and progressive unfreezing
(model.training.trainer.trainable_stages_for) trains only its last stage groups: under 300 labels none,
under 1,500 the last one. The frozen groups' output for an image is therefore the same in every epoch,
every cycle and every model, and recomputing it was most of the time of a first model, a retrain and a
rescoring (issue 13: 296 s for a first model on 42 images, 2.2 min to rescore 5,000). This cache keeps,
per image, the input of the first trainable group and the pooled feature maps of the frozen stages
(which the loss prediction module reads); training, scoring, ``/predict`` and the simulation then run
only the trainable groups, the heads and the loss module.

Keys. A *space* is one frozen prefix: the backbone, how many groups are frozen (``depth``), the image
size, the transforms, and the bytes of the frozen weights themselves (so a different weights file, or
a checkpoint whose frozen groups differ, never reads another's features). Within a space an entry is
keyed by the image file's content (BLAKE2b of its bytes: a task whose image changed is computed
again) and the view: view 0 is the clean input that scoring sees; views 1..n are augmented training
views, each drawn with a seed derived from (content, view), so every process makes the same one.

Files. ``<root>/<space>/<ab>/<content>-<view>.bin``: the features as float32 (view 0, so cached scores
equal the full forward's) or float16 (training views, half the disk), then a 16-byte BLAKE2b digest
of them. An entry of the wrong length or digest is deleted and computed again, never served. Entries
are written to a temporary name and renamed into place, so several workers can fill one cache: the
worst case is an entry computed twice. The cache is kept to about ``max_bytes``; past that, the entries
read or written longest ago go first.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.data.examples import Example, PixelSource, collate
from model.data.examples import ImageDataset as PixelReader
from model.data.images import ImageError, read_image_bytes
from model.data.transforms import eval_transform, train_transform
from model.nn.network import MultiHeadNet
from model.progress import Report, silent
from model.settings import CacheSettings

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 * 1024**3
CLEAN_VIEW = 0
_DIGEST = 16
# Per-process memos (content hashes, entries already marked used) are forgotten past this many: a web process
# lives for weeks and sees every image of every project
_MEMO_LIMIT = 200_000
_EVICT_SHARE = 20  # a process scans for eviction after writing 1/20 of the bound
# Per network, the spaces computed for it (see FeatureCache.space); per (backbone, depth, size), entry shapes
_spaces: weakref.WeakKeyDictionary[MultiHeadNet, dict[tuple[int, int], tuple[tuple[Any, ...], FeatureSpace]]] = (
    weakref.WeakKeyDictionary()
)
_shapes: dict[tuple[str, int, int], tuple[tuple[int, ...], int]] = {}


@dataclass(frozen=True)
class FeatureSpace:
    """One frozen prefix of one backbone at one image size: where its entries live and their shape."""

    path: Path
    depth: int
    image_size: int
    map_shape: tuple[int, ...]
    pooled_dim: int

    @property
    def floats(self) -> int:
        return math.prod(self.map_shape) + self.pooled_dim

    def entry(self, content: str, view: int) -> Path:
        return self.path / content[:2] / f"{content}-{view}.bin"

    @staticmethod
    def dtype(view: int) -> np.dtype[Any]:
        """float32 for the clean view (cached scores must equal the full forward), float16 for training views."""
        return np.dtype(np.float32 if view == CLEAN_VIEW else np.float16)


class FeatureCache:
    """Frozen-backbone features by (space, image content, view), on disk under ``root``, at most ``max_bytes``."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the feature cache needs a positive size bound, got {max_bytes} bytes")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._contents: dict[tuple[str, int, int, int], str] = {}
        self._touched: set[Path] = set()
        self._written = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"root": str(self.root), "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        FeatureCache.__init__(self, state["root"], state["max_bytes"])

    @classmethod
    def from_settings(cls, settings: CacheSettings, default_dir: Path) -> FeatureCache | None:
        """The cache ``settings`` describe (FEATURE_CACHE_DIR, FEATURE_CACHE_MAX_MB; 0 MB: none), else under
        ``default_dir``."""
        if settings.feature_cache_max_mb == 0:
            return None
        return cls(settings.feature_cache_dir or default_dir, settings.feature_cache_max_mb * 2**20)

    # -- keys ---------------------------------------------------------------------------------------

    def space(self, net: MultiHeadNet, depth: int, image_size: int) -> FeatureSpace:
        """The space of ``net``'s first ``depth`` stage groups (1..4) at ``image_size``.

        Hashing the frozen weights costs tens of milliseconds, as much as a forward pass: the result is
        remembered per network until one of those tensors changes (torch counts in-place changes in
        each tensor's ``_version``; an optimizer step or ``load_state_dict`` moves it).
        """
        if not 1 <= depth <= 4:
            raise ValueError(f"a cached prefix is 1..4 stage groups deep, got {depth}")
        backbone = net.backbone
        tensors = [
            (name, tensor)
            for group in backbone.stage_groups()[:depth]
            for name, tensor in sorted([*group.named_parameters(), *group.named_buffers()], key=lambda item: item[0])
        ]
        stamp = tuple((t.data_ptr(), t._version) for _, t in tensors)
        known = _spaces.setdefault(net, {})
        if known.get((depth, image_size), (None,))[0] == stamp:
            return known[(depth, image_size)][1]
        digest = hashlib.blake2b(digest_size=16)
        transforms = (
            eval_transform(backbone.mean, backbone.std),
            train_transform(image_size, backbone.mean, backbone.std),
        )
        digest.update(f"{backbone.name}|{depth}|{image_size}|{transforms!r}".encode())
        for name, tensor in tensors:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        shape = _shapes.get((backbone.name, depth, image_size))
        if shape is None:
            device = next(net.parameters()).device
            with torch.inference_mode():
                x, pooled = _prefix(net, torch.zeros(1, 3, image_size, image_size, device=device), depth)
            shape = _shapes[(backbone.name, depth, image_size)] = (tuple(x.shape[1:]), int(pooled.shape[1]))
        space = FeatureSpace(
            path=self.root / digest.hexdigest(),
            depth=depth,
            image_size=image_size,
            map_shape=shape[0],
            pooled_dim=shape[1],
        )
        known[(depth, image_size)] = (stamp, space)
        return space

    def content_key(self, example: Example) -> str:
        """BLAKE2b of the image file's bytes, remembered per (path, size, mtime, inode) within this process."""
        path = Path(example.source)
        try:
            st = path.stat()
        except OSError:
            st = None
        memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino) if st is not None else None
        if memo is not None and memo in self._contents:
            return self._contents[memo]
        key = hashlib.blake2b(read_image_bytes(path, example.key), digest_size=16).hexdigest()
        if memo is not None:
            if len(self._contents) >= _MEMO_LIMIT:
                self._contents.clear()
            self._contents[memo] = key
        return key

    # -- entries ------------------------------------------------------------------------------------

    def read(self, space: FeatureSpace, content: str, view: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (map, pooled) of an entry as float32, or None when it is missing; a damaged entry is deleted."""
        path = space.entry(content, view)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        dtype = space.dtype(view)
        body = space.floats * dtype.itemsize
        if len(data) != body + _DIGEST or hashlib.blake2b(data[:body], digest_size=_DIGEST).digest() != data[body:]:
            logger.warning("feature cache: %s is damaged (%d bytes); computing it again", path, len(data))
            path.unlink(missing_ok=True)
            return None
        if path not in self._touched:  # least recently *used* goes first: mark it used, once per process
            if len(self._touched) >= _MEMO_LIMIT:
                self._touched.clear()
            self._touched.add(path)
            try:
                os.utime(path)
            except OSError:
                pass
        values = torch.from_numpy(np.frombuffer(data, dtype=dtype, count=space.floats).astype(np.float32))
        n_map = math.prod(space.map_shape)
        return values[:n_map].reshape(space.map_shape), values[n_map:]

    def write(self, space: FeatureSpace, content: str, view: int, x: torch.Tensor, pooled: torch.Tensor) -> None:
        """Store one entry atomically (temporary file, then rename)."""
        path = space.entry(content, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        values = torch.cat([x.reshape(-1), pooled.reshape(-1)]).cpu().numpy().astype(space.dtype(view))
        body = values.tobytes()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.write(hashlib.blake2b(body, digest_size=_DIGEST).digest())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._written += len(body) + _DIGEST

    # -- filling ------------------------------------------------------------------------------------

    def fill(
        self,
        net: MultiHeadNet,
        space: FeatureSpace,
        examples: Sequence[Example],
        contents: Sequence[str],
        views: Sequence[int],
        decoded: PixelSource | None = None,
        batch_size: int = 32,
        report: Report = silent,
    ) -> dict[int, str]:
        """Compute the missing entries of ``examples`` x ``views``; returns {example index: reason} of images
        that could not be read. ``contents`` are the examples' content keys."""
        wanted = [(i, v) for i, c in enumerate(contents) for v in views if not space.entry(c, v).is_file()]
        failures: dict[int, str] = {}
        if not wanted:
            return failures
        reader = _Views(examples, contents, wanted, space, net, decoded)
        # its own generator: a loader without one draws from torch's global random state, and then whether
        # the cache was already full would change every later random number of a training (and its result)
        loader = DataLoader(reader, batch_size=batch_size, collate_fn=list, generator=torch.Generator())
        device = next(net.parameters()).device
        done = 0
        with torch.inference_mode():
            for items in loader:
                good = [it for it in items if "image" in it]
                failures.update((it["index"], it["error"]) for it in items if "error" in it)
                if good:
                    x, pooled = _prefix(net, torch.stack([it["image"] for it in good]).to(device), space.depth)
                    for it, xi, pi in zip(good, x, pooled):
                        self.write(space, contents[it["index"]], it["view"], xi, pi)
                done += len(items)
                report("features", done, len(wanted))
        logger.info("feature cache: computed %d entries (%d failed)", len(wanted) - len(failures), len(failures))
        self.evict_if_due()
        return failures

    def loader(
        self,
        net: MultiHeadNet,
        examples: list[Example],
        depth: int,
        image_size: int,
        views: int = 1,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        decoded: PixelSource | None = None,
        report: Report = silent,
    ) -> DataLoader:
        """A DataLoader of cached features for ``examples``, filling what is missing first.

        ``views`` 1 gives the clean view (scoring, validation); more gives, per item and epoch, one of
        the clean view and ``views - 1`` augmented ones at random (training). Batches look like
        :class:`~model.data.examples.ImageDataset`'s, with the cached map as ``image`` plus ``pooled``
        and ``start``; images that cannot be read come back as failures, as there.
        """
        space = self.space(net, depth, image_size)
        contents: list[str | None] = []
        failures: dict[int, str] = {}
        for i, ex in enumerate(examples):
            try:
                contents.append(self.content_key(ex))
            except ImageError as exc:
                contents.append(None)
                failures[i] = str(exc)
        readable = [i for i, c in enumerate(contents) if c is not None]
        filled = self.fill(
            net,
            space,
            [examples[i] for i in readable],
            [contents[i] or "" for i in readable],
            range(views),
            decoded,
            batch_size,
            report,
        )
        failures.update((readable[j], reason) for j, reason in filled.items())
        dataset = CachedFeatures(self, space, examples, contents, failures, views, net, decoded)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(seed) if shuffle else None,
        )

    # -- bound --------------------------------------------------------------------------------------

    def evict_if_due(self) -> None:
        """Keep the cache under ``max_bytes``: scan once this process has written 1/_EVICT_SHARE of it since its
        last scan. Only writes trigger a scan, so a /predict that adds one entry never walks the whole folder;
        with several processes the cache can overshoot by that share per process until one of them scans."""
        if self._written < self.max_bytes // _EVICT_SHARE:
            return
        self.evict()

    def evict(self) -> int:
        """Delete the least recently used entries until the cache holds at most ``max_bytes``; returns bytes freed."""
        self._written = 0
        entries = []
        for path in self.root.glob("*/*/*.bin"):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            self._touched.discard(path)
            freed += size
        if freed:
            logger.info("feature cache: removed %.0f MB of the least recently used entries", freed / 1e6)
        return freed

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*/*.bin"))


def _prefix(net: MultiHeadNet, images: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen groups in eval mode (BatchNorm on its pretrained statistics, as in training)."""
    # Module by module: stage_groups() wraps the groups in new containers whose own flag says nothing
    training = [m for g in net.backbone.stage_groups()[:depth] for m in g.modules() if m.training]
    for m in training:
        m.training = False
    try:
        return net.backbone.prefix(images, depth)
    finally:
        for m in training:
            m.training = True


def view_seed(content: str, view: int) -> int:
    """The augmentation seed of one training view: the same in every process."""
    return int.from_bytes(hashlib.blake2b(f"{content}:{view}".encode(), digest_size=8).digest(), "big") >> 1


class _Views(Dataset):
    """(example, view) pairs as network inputs: the clean view, or a seeded augmented one."""

    def __init__(
        self,
        examples: Sequence[Example],
        contents: Sequence[str],
        wanted: list[tuple[int, int]],
        space: FeatureSpace,
        net: MultiHeadNet,
        decoded: PixelSource | None,
    ) -> None:
        b = net.backbone
        self.examples, self.contents, self.wanted = examples, contents, wanted
        self.pixels = PixelReader(list(examples), None, space.image_size, decoded)
        self.clean = eval_transform(b.mean, b.std)
        self.augment = train_transform(space.image_size, b.mean, b.std)

    def __len__(self) -> int:
        return len(self.wanted)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i, view = self.wanted[j]
        try:
            pixels = self.pixels.pixels(self.examples[i])
        except ImageError as exc:
            return {"index": i, "view": view, "error": str(exc)}
        if view == CLEAN_VIEW:
            return {"index": i, "view": view, "image": self.clean(pixels)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.contents[i], view))
            return {"index": i, "view": view, "image": self.augment(pixels)}


class CachedFeatures(Dataset):
    """Cached features of a list of examples, shaped like :class:`~model.data.examples.ImageDataset`'s items.

    An entry that went missing or was damaged since the loader filled the cache (another worker's
    eviction, a disk error) is computed again on the spot, never skipped.
    """

    def __init__(
        self,
        cache: FeatureCache,
        space: FeatureSpace,
        examples: list[Example],
        contents: list[str | None],
        failures: dict[int, str],
        views: int,
        net: MultiHeadNet,
        decoded: PixelSource | None,
    ) -> None:
        self.cache, self.space, self.examples, self.contents = cache, space, examples, contents
        self.failures, self.views, self.net, self.decoded = failures, views, net, decoded

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        content = self.contents[i]
        if i in self.failures or content is None:
            return {"index": i, "error": self.failures.get(i, "unreadable")}
        view = CLEAN_VIEW if self.views == 1 else int(torch.randint(self.views, ()).item())
        entry = self.cache.read(self.space, content, view)
        if entry is None:
            failed = self.cache.fill(self.net, self.space, [self.examples[i]], [content], [view], self.decoded)
            entry = None if failed else self.cache.read(self.space, content, view)
            if entry is None:
                return {"index": i, "error": failed.get(0, "its cached features could not be written")}
        x, pooled = entry
        labels = [(-1 if v is None else v) for v in self.examples[i].labels]
        return {
            "index": i,
            "image": x,
            "pooled": pooled,
            "start": self.space.depth,
            "labels": torch.tensor(labels, dtype=torch.long),
        }

"""Patient bags from feature stores: one bag = all regions of a patient's slides, batch size 1."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from hipt.features import FeatureStore, open_store
from hipt.models import bag_to_grid

if TYPE_CHECKING:
    from hipt.models import Vit4K

log = logging.getLogger(__name__)

KINDS = ("feats256", "feats4k")


class Bag(NamedTuple):
    """One patient (``data`` has no batch dimension: ``[M,256,D]`` or ``[M,D4k]``).

    Attributes:
        data: the pooled regions of the patient's slides.
        target: ``[1, ...]`` target (see ``Task.targets``).
        index: position of the patient in the dataset.
    """

    data: Tensor
    target: Tensor
    # The field shadows tuple.index, which mypy reports for any NamedTuple field of that name.
    index: int  # type: ignore[assignment]


class BagReader:
    """Reads and pools the regions of each patient's slides (optionally cached in memory).

    Args:
        stores: patient id -> store paths of their slides (pooled in this order).
        kind: ``feats256`` (``[M,256,D256]``) or ``feats4k`` (``[M,D4k]``).
        cache_gb: cache every bag when all of them need less than this many GB (float32).
        encoder: a frozen region encoder (the ViT-4K of ``hipt_lgp``) applied to every
            ``feats256`` bag as it is read: bags come out as ``[M, E]`` region embeddings and
            the cache holds those, so training runs the encoder once per bag instead of once
            per step. It must be deterministic (eval mode, fixed weights) and per region.
    """

    def __init__(
        self,
        stores: Mapping[str, Sequence[str | Path]],
        kind: str,
        cache_gb: float,
        encoder: nn.Module | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind}")
        if encoder is not None and kind != "feats256":
            raise ValueError("a region encoder reads feats256 bags, not feats4k")
        self.kind, self.encoder = kind, encoder
        self.stores: dict[str, list[FeatureStore]] = {
            p: [open_store(s) for s in paths] for p, paths in stores.items()
        }
        some = next(iter(self.stores.values()))[0].meta
        width = 256 * some.feature_dim_256 if kind == "feats256" else some.feature_dim_4k
        if encoder is not None:
            width = int(cast("Vit4K", encoder).embed_dim)
        total = sum(s.n_regions for ss in self.stores.values() for s in ss)
        self.nbytes = total * width * 4
        self.cached = self.nbytes <= cache_gb * 1e9
        # numpy, not tensors: a tensor first made under inference mode (validation) could not
        # be used for training later.
        self._cache: dict[str, np.ndarray] = {}
        log.info(
            "bags: %s%s, %d regions, %.2f GB as float32 (%s)",
            kind,
            "" if encoder is None else " through the frozen ViT-4K once",
            total,
            self.nbytes / 1e9,
            "cached in memory" if self.cached else "read per step",
        )

    def preload(self) -> None:
        """Read (and encode) every bag into the cache now, in this process (no-op if uncached).

        With an encoder this keeps the encoding out of DataLoader workers and out of the
        first epoch's timing.
        """
        if self.cached:
            for patient in self.stores:
                if patient not in self._cache:
                    self._cache[patient] = self._read_all(patient)

    def n_regions(self, patient: str) -> int:
        """Regions in the patient's bag."""
        return sum(s.n_regions for s in self.stores[patient])

    def _read_store(self, store: FeatureStore, index: np.ndarray | None) -> np.ndarray:
        if self.kind == "feats4k":
            x = store.feats4k()
            return x if index is None else x[index]
        return store.feats256() if index is None else store.feats256(index)

    def read(self, patient: str, max_regions: int | None = None) -> Tensor:
        """The bag of ``patient``; with ``max_regions``, a random subset of that many regions.

        The subset is drawn from torch's global generator (seeded per fold), so a seeded run
        is reproducible.
        """
        m = self.n_regions(patient)
        pick = None
        if max_regions is not None and m > max_regions:
            pick = torch.randperm(m)[:max_regions].sort().values.numpy()
        if self.cached:
            if patient not in self._cache:
                self._cache[patient] = self._read_all(patient)
            bag = self._cache[patient]
            return torch.from_numpy(bag if pick is None else bag[pick])
        if pick is None:
            return torch.from_numpy(self._read_all(patient))
        parts, start = [], 0
        for store in self.stores[patient]:
            local = pick[(pick >= start) & (pick < start + store.n_regions)] - start
            if len(local):
                parts.append(self._read_store(store, local))
            start += store.n_regions
        return torch.from_numpy(self._encode(np.concatenate(parts, 0)))

    def _read_all(self, patient: str) -> np.ndarray:
        bag = np.concatenate([self._read_store(s, None) for s in self.stores[patient]], 0)
        return self._encode(bag)

    def _encode(self, bag: np.ndarray, chunk: int = 64) -> np.ndarray:
        """``bag`` through the region encoder (``[M,256,D]`` -> ``[M,E]``), if there is one."""
        if self.encoder is None:
            return bag
        device = next(self.encoder.parameters()).device
        with torch.no_grad():
            out = [
                self.encoder(bag_to_grid(torch.from_numpy(bag[i : i + chunk]).to(device)))
                for i in range(0, len(bag), chunk)
            ]
        return torch.cat(out).float().cpu().numpy()


class BagDataset(Dataset[Bag]):
    """Bags of some patients with their targets.

    Args:
        reader: the shared :class:`BagReader`.
        patients: patient ids.
        targets: ``[N, ...]`` targets in the same order.
        max_regions: region cap per bag (training only), None = whole bags.
    """

    def __init__(
        self, reader: BagReader, patients: Sequence[str], targets: Tensor, max_regions: int | None
    ) -> None:
        self.reader, self.patients, self.targets = reader, list(patients), targets
        self.max_regions = max_regions

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, i: int) -> Bag:
        data = self.reader.read(self.patients[i], self.max_regions)
        return Bag(data, self.targets[i : i + 1], i)


def collate_one(items: list[Bag]) -> Bag:
    """Batch size 1: keep the variable region count ``M`` (no padding, no batch dimension)."""
    if len(items) != 1:
        raise ValueError(f"bags are batched one at a time, got {len(items)}")
    return items[0]


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling weight ``N / n_class`` of each item (the official weighted sampler)."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return len(labels) / counts[inverse]


class SlideBagDataModule(L.LightningDataModule):
    """Train / val / test loaders of one fold.

    Args:
        train: training bags (sampled with ``max_regions``).
        val: validation bags or None.
        test: test bags.
        sample_labels: groups balanced by the training sampler; None = plain shuffling.
        seed: seed of the sampler's own generator.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train: BagDataset,
        val: BagDataset | None,
        test: BagDataset,
        sample_labels: np.ndarray | None,
        seed: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train, self.val, self.test = train, val, test
        self.sample_labels, self.seed, self.num_workers = sample_labels, seed, num_workers

    def _loader(self, ds: BagDataset, **kw: Any) -> DataLoader[Bag]:
        return DataLoader(
            ds,
            batch_size=1,
            collate_fn=collate_one,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            **kw,
        )

    def train_dataloader(self) -> DataLoader[Bag]:
        """Class-balanced sampling with replacement, or a seeded shuffle."""
        gen = torch.Generator().manual_seed(self.seed)
        if self.sample_labels is not None:
            weights = torch.as_tensor(balanced_weights(self.sample_labels), dtype=torch.double)
            # torch's stub asks for Sequence[float]; the sampler takes a tensor as it is.
            sampler = WeightedRandomSampler(
                weights,  # type: ignore[arg-type]
                len(self.train),
                True,
                generator=gen,
            )
            return self._loader(self.train, sampler=sampler)
        return self._loader(self.train, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader[Bag] | list[DataLoader[Bag]]:
        """Whole validation bags in order (no loader when there is no validation part)."""
        return [] if self.val is None else self._loader(self.val)

    def test_dataloader(self) -> DataLoader[Bag]:
        """Whole test bags in order."""
        return self._loader(self.test)

    def predict_dataloader(self) -> DataLoader[Bag]:
        """Same as :meth:`test_dataloader`."""
        return self._loader(self.test)

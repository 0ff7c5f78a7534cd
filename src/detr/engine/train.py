"""Training loop: the DETR recipe, exact resume, atomic checkpoints, DDP under ``torchrun``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.coco import CocoDetection
from ..data.mosaic import Mosaic
from ..data.tile_crop import TileCrop
from ..data.transforms import collate, train_transforms
from ..device import autocast, resolve_device
from ..distributed import (
    DistInfo,
    ResumableSampler,
    barrier,
    destroy_process_group_cleanly,
    gather_to_main,
    init_distributed,
)
from ..fileio import atomic_write, atomic_write_text, free_folder, holds_any, run_lock
from ..hub.checkpoints import CheckpointError, fetch_checkpoint
from ..models.detr import DETR
from ..terminal import progress_bars
from .build import build_model, run_preprocessing
from .config import RUN_CONFIG, TrainConfig
from .ema import ModelEMA
from .evaluate import evaluate_model, evaluation_dataset
from .loggers import JsonLinesLogger, RunLogger, TensorBoardLogger
from .plots import plot_curves, prediction_grid
from .report import evaluation_report
from .splits import dataset_splits, write_made_split
from .stopping import StopRequest, ignore_interrupts_in_worker

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth"
CHECKPOINT_VERSION = 1
# the longest warm-up, as a fraction of the run (its steps, and its --max-minutes): a longer one is cut to fit,
# or the learning rate would never reach its value (scratch's 400 steps in a 40-step run). A fifth leaves the
# demo's tuned warm-up (400 of 4000 steps, about 400 of 3200 done in its 9 minutes) as it is
WARMUP_MAX_FRACTION = 0.2
# what makes a folder hold a run: written into only with resume or exist_ok
RUN_FILES = (CHECKPOINT, "log.jsonl", RUN_CONFIG, "summary.json", "final", "best")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class SeededDataset(Dataset):
    """Makes each sample's random augmentation a function of (seed, epoch, index) only.

    Then a resumed run, or a run with another number of data-loading workers, sees
    exactly the same augmented samples.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (the one transforms draw from): torch.manual_seed also seeds every
            # accelerator's, and queues a lazy CUDA call with its stack trace, once per sample
            torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + index) % (2**63))
            return self.dataset[index]


class LossModule(nn.Module):
    """Wraps a DETR so that DDP's forward computes the loss terms (DDP syncs gradients of forward)."""

    def __init__(self, model: DETR) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return self.model.get_loss_dict(images, targets, mask)


def param_groups(model: DETR, config: TrainConfig) -> list[dict[str, Any]]:
    """Backbone parameters at ``lr_backbone``, the rest at ``lr`` (the reference's two groups)."""
    in_backbone = ("backbone.", "detr.backbone.")  # a mask model holds its detector under detr.
    backbone = [p for n, p in model.named_parameters() if n.startswith(in_backbone) and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith(in_backbone) and p.requires_grad]
    groups = [{"params": rest, "lr": config.lr, "name": "transformer"}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr_backbone, "name": "backbone"})
    return groups


def _to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def _rng_state() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(state), gauss]}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def label_space(dataset: CocoDetection, config: TrainConfig) -> tuple[list[str], list[int] | None]:
    """The classes a run trains: the dataset's categories (names and ids), or with ``extend_classes`` the
    starting weights' classes followed by the dataset's categories they lack (ids then mean nothing)."""
    if not config.extend_classes:
        return dataset.class_names, dataset.category_ids
    known = fetch_checkpoint(config.weights).class_names if config.weights else None
    if not known:
        raise ValueError("extend_classes adds the dataset's categories to the classes of --weights, which name none")
    lower = {name.strip().casefold() for name in known}
    return list(known) + [n for n in dataset.class_names if n.strip().casefold() not in lower], None


def run_folder(config: TrainConfig, info: DistInfo) -> Path:
    """Where a run writes: ``output_dir``, or when that holds an earlier run (and neither ``resume`` nor
    ``exist_ok`` is set) the first free ``output_dir-2``, ``-3`` ..., chosen by rank 0 for every process."""
    requested = Path(config.output_dir)
    if config.resume or config.exist_ok:
        return requested
    chosen = [str(free_folder(requested, lambda p: holds_any(p, RUN_FILES))) if info.is_main else None]
    if info.enabled:
        dist.broadcast_object_list(chosen, src=0)
    out = Path(chosen[0])
    if out != requested and info.is_main:
        print(
            f"{requested} holds an earlier run, left as it is: this run writes to {out} "
            "(--resume continues the earlier run, --exist-ok writes into its folder)"
        )
    return out


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, checked; damaged or foreign files give a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...
        raise CheckpointError(
            f"checkpoint {path} is damaged and cannot be read ({err}); delete it to start over"
        ) from err
    needed = {"model", "optimizer", "scheduler", "epoch", "epoch_step", "step", "rng", "config", "version"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a detr training checkpoint (found {found}); use weights= for model files")
    return ckpt


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig` and runs it (``fit``)."""

    def __init__(self, config: TrainConfig, loggers: Sequence[RunLogger] = ()) -> None:
        if not (config.data or config.train_annotations):
            raise ValueError(
                "no dataset given: --data DIR (a COCO-format folder) or --data FILE / --train-annotations FILE "
                "(a COCO annotation file)"
            )
        self.config = config
        self.device = resolve_device(config.device)
        self.dist: DistInfo = init_distributed(str(self.device))
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.out = run_folder(config, self.dist)
        config = self.config = dataclasses.replace(config, output_dir=str(self.out))
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        # the steps below run in this order (the model's initial weights follow the seed set above)
        self._read_data()
        self._build_model()
        self._build_optimization()
        self._prepare_run(loggers)
        if config.resume:
            self._resume(self.out / CHECKPOINT)

    def _read_data(self) -> None:
        """The training and validation splits, every image checked readable before minutes of training."""
        config = self.config
        crop = config.crop_resize_scales if config.crop else None
        train_tf = train_transforms(config.train_scales, config.max_size, crop, tuple(config.crop_size))
        train_split, val_split = dataset_splits(config)
        masks = config.masks or config.panoptic
        self.train_set = CocoDetection(train_split, transforms=train_tf, masks=masks)
        if len(self.train_set) == 0:
            raise ValueError(
                f"the {config.train_split!r} split has no images: {self.train_set.annotation_file} lists none"
            )
        self.val_set = (
            # read as the model will read images after training (predict, eval): the same AP there
            evaluation_dataset(val_split, run_preprocessing(config), masks=masks)
            if val_split is not None
            else None
        )
        for dataset in (self.train_set, self.val_set):
            if dataset is not None:
                dataset.check_images()  # every file there and readable, before minutes of training
        if self.val_set is not None and self.val_set.categories != self.train_set.categories:
            raise ValueError("train and val splits declare different categories; they must share one category list")

    def _build_model(self) -> None:
        """The model in the training data's label space, its loss, and their DDP wrapping under torchrun."""
        config = self.config
        class_names, category_ids = label_space(self.train_set, config)
        # the model keeps how it reads images, for predict and eval after training
        self.model: DETR = build_model(config, class_names, category_ids, weights=config.weights).to(self.device)
        self.category_match = self.train_set.match_model(self.model)  # targets in the model's class ids
        if self.val_set is not None:
            self.val_set.match_model(self.model)
        if config.sync_batch_norm:
            if not self.dist.enabled or self.device.type != "cuda":
                raise ValueError(
                    "sync_batch_norm shares batch-norm statistics across GPUs: it needs torchrun with several "
                    "processes on CUDA (PyTorch's SyncBatchNorm does not run on the CPU)"
                )
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss_module: nn.Module = LossModule(self.model)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # some options leave parameters out of a step (denoising queries when a process's batch has no
            # target, two-stage anchors that replace the learned ones); DDP must then look for them
            unused = any(option.may_leave_parameters_unused for option in self.model.options)
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=ids, find_unused_parameters=unused
            )
            torch.manual_seed(config.seed + 1_000_003 * self.dist.rank)  # same weights, own dropout per process

    def _build_optimization(self) -> None:
        """Optimizer, sampler, schedule, mixed precision, the sample pipeline and the weight average."""
        config = self.config
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.sampler = ResumableSampler(len(self.train_set), config.seed, self.dist.rank, self.dist.world_size)
        self.steps_per_epoch = max(1, -(-len(self.sampler) // config.batch_size) // config.accumulate)
        self.warmup_steps = min(config.warmup_steps, math.ceil(WARMUP_MAX_FRACTION * self.total_steps()))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.autocast_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp fp16 needs a GPU; on CPU use amp bf16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")

        samples = TileCrop(self.train_set, config.tile_crop) if config.tile_crop else self.train_set
        samples = Mosaic(samples, config.mosaic) if config.mosaic > 0 else samples
        self.seeded = SeededDataset(samples, config.seed)
        self.ema = ModelEMA(self.model, config.ema_decay, config.ema_warmup) if config.ema else None

    def _prepare_run(self, loggers: Sequence[RunLogger]) -> None:
        """The run's loggers and counters."""
        config = self.config
        self.loggers: list[RunLogger] = []
        if self.dist.is_main:  # only the main process logs
            self.loggers.append(JsonLinesLogger(self.out / "log.jsonl"))
            if config.tensorboard:
                self.loggers.append(TensorBoardLogger(self.out / "tensorboard"))
            self.loggers.extend(loggers)
        self.epoch = 0  # current epoch
        self.epoch_step = 0  # optimizer steps done in the current epoch
        self.step = 0  # optimizer steps done in total
        self.best_score = -math.inf  # best value of config.best_metric so far
        self.evals_since_best = 0  # evaluations since it last improved (early stopping)
        self.last_results: list[dict[str, Any]] | None = None  # the last evaluation's detections (rank 0)
        self.started = time.perf_counter()
        self.seconds_before = 0.0  # training time of the run before this process (resumed runs)
        self.history: list[dict[str, Any]] = []
        self.stop = StopRequest(announce=self.dist.is_main)  # Ctrl-C / SIGTERM while fit runs

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier after ``step`` optimizer steps: warm-up, then step drop or cosine."""
        cfg = self.config
        warmup = self.warmup_steps
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if warm < 1 and cfg.max_minutes and step > 0:  # nor longer than its share of the time limit
            warm = max(warm, min(1.0, self._elapsed_minutes() / (WARMUP_MAX_FRACTION * cfg.max_minutes)))
        if cfg.lr_schedule == "step":
            return warm * 0.1 ** ((step // self.steps_per_epoch) // cfg.lr_drop)
        total = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        progress = min(1.0, max(0.0, step - warmup) / max(1, total - warmup))
        if cfg.anneal_by_time and step > warmup:
            progress = max(progress, min(1.0, self._elapsed_minutes() / cfg.max_minutes))
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _elapsed_minutes(self) -> float:
        """Training minutes so far, the main process's under DDP (every replica must stop at the same
        step and use the same lr)."""
        return self._elapsed_seconds() / 60

    def _elapsed_seconds(self) -> float:
        """Training time of the run so far, resumed parts included; rank 0's under DDP."""
        elapsed = torch.tensor(self.seconds_before + time.perf_counter() - self.started, device=self.device)
        if self.dist.enabled:
            dist.broadcast(elapsed, src=0)
        return float(elapsed)

    # ------------------------------------------------------------ persistence
    def _resume(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        if ckpt["config"].get("model") != self.config.model:
            raise CheckpointError(f"{path} was written by a {ckpt['config'].get('model')} run, not {self.config.model}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.epoch_step, self.step = ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]
        self.best_score = ckpt.get("best_score", ckpt.get("best_ap", -math.inf))
        self.evals_since_best = ckpt.get("evals_since_best", 0)
        if self.ema is not None:
            if not ckpt.get("ema"):
                raise CheckpointError(f"{path} was written by a run without --ema; resume it without --ema")
            self.ema.load_state_dict(ckpt["ema"])
        self.seconds_before = ckpt.get("seconds", 0.0)
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        _set_rng_state(per_rank[self.dist.rank] if len(per_rank) == self.dist.world_size else ckpt["rng"])
        self._log({"type": "resume", "epoch": self.epoch, "step": self.step, "from": str(path)})

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly from here, written atomically (by rank 0, with every
        process's random state)."""
        rng_per_rank = gather_to_main(self.dist, _rng_state())
        seconds = self._elapsed_seconds()
        if not self.dist.is_main:
            return
        ckpt = {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "best_score": self.best_score,
            "evals_since_best": self.evals_since_best,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_per_rank[0],
            "rng_per_rank": rng_per_rank,
            "seconds": seconds,
            "config": self.config.to_dict(),
            "class_names": self.model.class_names,
            "category_ids": self.model.category_ids,
        }
        atomic_write(self.out / CHECKPOINT, lambda tmp: torch.save(ckpt, tmp))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.history.append({"time": round(time.time(), 3), **record})
        for logger in self.loggers:
            logger.log(record)

    # --------------------------------------------------------------- training
    def _loader(self) -> DataLoader:
        self.seeded.epoch = self.epoch
        per_process_batch = self.config.batch_size
        self.sampler.set_epoch(self.epoch, start=self.epoch_step * per_process_batch * self.config.accumulate)
        return DataLoader(
            self.seeded,
            batch_size=per_process_batch,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=self.config.workers,
            drop_last=False,
            # its own generator: creating the loader must not draw from the global RNG (dropout's),
            # or a resumed run would see different random numbers than an uninterrupted one
            generator=torch.Generator().manual_seed(self.config.seed + self.epoch),
            worker_init_fn=ignore_interrupts_in_worker,
        )

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=loss.device)
        if self.dist.enabled:
            dist.all_reduce(bad)
        if bad.item() > 0:
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items() if not k[-1].isdigit())
            raise TrainingDiverged(
                f"loss is not finite at epoch {self.epoch}, step {self.step} ({shown}); stopping. The last good "
                f"checkpoint is {self.out / CHECKPOINT}: resume from it with a lower lr, or check the data"
            )

    def train_one_epoch(self) -> bool:
        """Run the rest of the current epoch; returns False when ``max_steps`` was reached."""
        from tqdm import tqdm

        cfg = self.config
        loader = self._loader()
        self.loss_module.train()
        micro, sums = 0, {}
        bars = progress_bars(cfg.progress)
        bar = tqdm(
            total=len(loader) // cfg.accumulate,
            initial=0,
            desc=f"epoch {self.epoch}",
            disable=not (bars and self.dist.is_main),
            leave=False,
        )
        for images, mask, targets in loader:
            images, mask = images.to(self.device, non_blocking=True), mask.to(self.device)
            targets = _to_device(targets, self.device)
            with self.autocast():
                try:
                    terms = self.loss_module(images, mask, targets)
                except ValueError as err:  # bad input, refused before it touched the model: say which batch
                    files = [str(self.train_set.image_path(t["image_id"])) for t in targets]
                    raise ValueError(f"epoch {self.epoch}, step {self.step + 1}, images {files}: {err}") from err
            loss = terms["loss"]
            self._check_finite(loss, terms)
            self.scaler.scale(loss / cfg.accumulate).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            micro += 1
            if micro < cfg.accumulate:
                continue
            self._optimizer_step()
            averaged = {k: v / micro for k, v in sums.items()}
            micro, sums = 0, {}
            bar.update(1)
            bar.set_postfix(loss=f"{averaged['loss']:.3f}")
            if self.step % cfg.log_every == 0:
                self._log_train_step(averaged, print_line=not bars)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.max_steps and self.step >= cfg.max_steps or self._out_of_time() or self._stop_requested():
                bar.close()
                return False
        bar.close()
        # micro-batches left over (fewer than `accumulate`) are dropped, their gradients cleared
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def autocast(self) -> torch.autocast:
        """The autocast a training forward runs under: ``config.amp``'s dtype, or off (float32)."""
        return autocast(self.device, self.autocast_dtype)

    def _optimizer_step(self) -> None:
        """One update from the gradients accumulated: clip, step, schedule, weight average, count."""
        if self.config.clip_max_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.epoch_step += 1

    def _log_train_step(self, averaged: dict[str, float], print_line: bool) -> None:
        """The step's averaged loss terms and learning rates to the loggers (and a printed line without a bar)."""
        lrs = {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self._log({"type": "train", "epoch": self.epoch, "step": self.step, **lrs, **averaged})
        if print_line and self.dist.is_main:  # no bar (asked for none, or no terminal): a line instead
            terms = "  ".join(f"{k} {averaged[k]:.4f}" for k in ("loss", "loss_ce", "loss_bbox", "loss_giou"))
            print(f"step {self.step}/{self.total_steps()}  epoch {self.epoch}  {terms}  lr {lrs['lr_transformer']:.2e}")

    def evaluate(self) -> dict[str, Any] | None:
        """COCO box metrics on the validation split (:func:`detr.engine.evaluate.evaluate_model`, as ``detr eval``
        measures them), or None without one. Under DDP every process predicts its share of the images and rank 0
        scores them all (the others return None). Mask AP and PQ are left to ``detr eval`` (PQ runs the model
        image by image: too slow to repeat during training)."""
        if self.val_set is None:
            return None
        cfg = self.config
        evaluation = evaluate_model(
            self.evaluated_model, self.val_set, tasks=("boxes",), batch_size=cfg.batch_size, workers=cfg.workers,
            device=self.device, autocast_dtype=self.autocast_dtype, progress=cfg.progress,
            all_classes=cfg.eval_all_classes, max_detections=cfg.eval_max_detections, per_class=cfg.per_class_ap,
            shard=(self.dist.rank, self.dist.world_size), gather=lambda found: gather_to_main(self.dist, found),
        )  # fmt: skip
        if evaluation is None:
            return None
        self.last_results = evaluation.results
        atomic_write_text(self.out / "predictions_val.json", json.dumps(evaluation.results))
        return evaluation.metrics

    def _stop_requested(self) -> bool:
        """Whether a stop was asked for (Ctrl-C, SIGTERM), in any process under DDP: all stop at the same step."""
        asked = self.stop.requested is not None
        if self.dist.enabled:
            flag = torch.tensor(float(asked), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item())
        return asked

    def resume_command(self) -> str:
        """The command that continues this run from its checkpoint (the run folder records its settings)."""
        return f"detr train --output-dir {shlex.quote(str(self.out))} --resume"

    def _out_of_time(self) -> bool:
        return bool(self.config.max_minutes) and self._elapsed_minutes() > self.config.max_minutes

    @property
    def evaluated_model(self) -> DETR:
        """The weights evaluated and saved: the moving average with ``ema``, else the trained ones."""
        return self.ema.model if self.ema is not None else self.model

    def _evaluate_and_keep_best(self) -> tuple[dict[str, Any] | None, bool]:
        """Evaluate, keep ``best/`` and count evaluations without progress; returns the metrics (rank 0)
        and whether early stopping says to stop (every process)."""
        cfg = self.config
        metrics = self.evaluate()
        stop = False
        if metrics is not None:
            scalars = {k: v for k, v in metrics.items() if k != "per_class_AP"}
            self._log({"type": "eval", "epoch": self.epoch, "step": self.step, **scalars})
            score = metrics[cfg.best_metric]  # None where the split cannot measure it
            if score is not None and score > self.best_score:
                self.best_score, self.evals_since_best = score, 0
                self.evaluated_model.save_pretrained(self.out / "best")
            else:
                self.evals_since_best += 1
            stop = bool(cfg.early_stopping_patience) and self.evals_since_best >= cfg.early_stopping_patience
            if stop:
                self._log({"type": "early_stop", "epoch": self.epoch, "step": self.step, "best": self.best_score})
            if len(self.loggers) > 1 and self.val_set is not None:  # loggers that take pictures
                grid = prediction_grid(self.evaluated_model, self.val_set, count=8)
                for logger in self.loggers:
                    logger.image("validation predictions", grid, self.step)
        if self.dist.enabled:  # rank 0 decides for everyone
            decision = [stop]
            dist.broadcast_object_list(decision, src=0)
            stop = decision[0]
        barrier(self.dist)
        return metrics, stop

    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs (or steps), evaluating, checkpointing and plotting.

        The run folder is locked while it runs (another process training into it is refused). The first
        Ctrl-C (SIGINT) or SIGTERM stops the run at the end of its step with a checkpoint, returning a summary
        with ``"stopped"`` (the signal's number); a second Ctrl-C raises ``KeyboardInterrupt`` at once.
        """
        with run_lock(self.out) if self.dist.is_main else contextlib.nullcontext(), self.stop:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg = self.config
        if self._finished():
            print(f"nothing to do: the run in {self.out} finished at step {self.step} (epoch {self.epoch})")
            return {"epochs": self.epoch, "steps": self.step, "seconds": 0.0, "finished_before": True}
        if self.dist.is_main:
            atomic_write_text(self.out / RUN_CONFIG, json.dumps(cfg.to_dict(), indent=2))
            write_made_split(self.out, self.train_set, self.val_set, cfg.val_fraction)  # for detr eval on this run
            if not cfg.resume:  # a fresh log (a folder of an earlier run is only reused with exist_ok)
                atomic_write_text(self.out / "log.jsonl", "")
            print(self.summary())
        metrics: dict[str, Any] | None = None
        start = self.started = time.perf_counter()
        while self.epoch < cfg.epochs:
            finished_epoch = self.train_one_epoch()
            if finished_epoch or self.epoch_step >= self.steps_per_epoch:  # max_steps may end an epoch's last step
                self.epoch += 1
                self.epoch_step = 0
            if self._stop_requested():
                return self._stopped(start)
            done = not finished_epoch or self.epoch >= cfg.epochs
            if done or self.epoch % cfg.eval_every == 0:
                metrics, stop = self._evaluate_and_keep_best()
                done = done or stop
            if self._stop_requested():  # asked during the evaluation
                return self._stopped(start)
            self.save_checkpoint()
            if self.dist.is_main:
                plot_curves(self.out / "log.jsonl", self.out / "curves.png")
            if done:
                break
        summary = {
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": round(time.perf_counter() - start, 1),
            "output_dir": str(self.out),
        }
        if metrics is not None:
            summary["metrics"] = metrics
        if self.dist.is_main:
            self.evaluated_model.save_pretrained(self.out / "final")
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
            if metrics is not None and self.last_results is not None:  # the last evaluation, for a person to read
                evaluation_report(self.val_set.annotations.raw, self.last_results, self.out / "report")
            for logger in self.loggers:
                logger.close()
        if self.dist.enabled:  # once the outputs are safe
            self._check_replicas_identical()
        return summary

    def _stopped(self, start: float) -> dict[str, Any]:
        """Checkpoint a run stopped when asked, close its logs and say how to resume it."""
        self.save_checkpoint()
        self._log({"type": "stopped", "epoch": self.epoch, "step": self.step, "signal": self.stop.requested})
        if self.dist.is_main:
            for logger in self.loggers:
                logger.close()
            print(
                f"stopped at step {self.step} of {self.total_steps()} (epoch {self.epoch}), checkpoint saved; "
                f"resume with: {self.resume_command()}",
                flush=True,
            )
        return {
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": round(time.perf_counter() - start, 1),
            "output_dir": str(self.out),
            "stopped": self.stop.requested,
        }

    def total_steps(self) -> int:
        """Optimizer steps the run will take, unless the clock stops it first."""
        cfg = self.config
        all_epochs = cfg.epochs * self.steps_per_epoch
        return min(cfg.max_steps, all_epochs) if cfg.max_steps else all_epochs

    def summary(self) -> str:
        """What the run is about to do: data, classes, model, device, schedule, output folder."""
        cfg, model = self.config, self.model

        def split(name: str, dataset: CocoDetection | None) -> str:
            if dataset is None:
                return f"{name}: none"
            boxes = sum(len(b) for b in dataset.annotations.boxes.values())
            made = f"; {dataset.split_note}, listed in split.json" if dataset.split_note else ""
            return f"{name}: {len(dataset)} images, {boxes} boxes ({dataset.format}: {dataset.annotation_file}{made})"

        names = model.class_names or []
        shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        options = ", ".join(o.name for o in model.options) or "none (the paper's model)"
        clock = f", at most {cfg.max_minutes:g} minutes" if cfg.max_minutes else ""
        processes = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        return "\n".join(
            [
                f"training {cfg.model} ({params / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trainable; options: "
                f"{options}) on {self.device}{processes}",
                split("train", self.train_set),
                split("val", self.val_set),
                f"classes: {model.num_classes} ({shown})",
                f"schedule: {self.total_steps()} optimizer steps ({self.steps_per_epoch} an epoch, batch "
                f"{cfg.batch_size} x {cfg.accumulate} x {self.dist.world_size}){clock}; lr {cfg.lr:g} "
                f"(backbone {cfg.lr_backbone:g}), {cfg.lr_schedule}"
                + self._warmup_text(),
                f"output: {self.out}",
            ]
        )

    def _warmup_text(self) -> str:
        """The warm-up for the summary, saying when it was cut to fit the run."""
        cfg = self.config
        if not cfg.warmup_steps:
            return ""
        share = f"{WARMUP_MAX_FRACTION:.0%}"
        text = f", warm-up {self.warmup_steps} steps"
        if self.warmup_steps < cfg.warmup_steps:
            text += f" (shortened from {cfg.warmup_steps} to {share} of the run's {self.total_steps()} steps)"
        if cfg.max_minutes:
            text += f", over by {WARMUP_MAX_FRACTION * cfg.max_minutes:g} minutes at the latest ({share} of the time)"
        return text

    def _finished(self) -> bool:
        """Whether the run has nothing left to train (a resumed run that had reached its end)."""
        cfg = self.config
        return self.epoch >= cfg.epochs or bool(cfg.max_steps and self.step >= cfg.max_steps)

    def _check_replicas_identical(self) -> None:
        """All processes must hold the same weights after DDP training; logged for the record."""
        checksum = torch.tensor(
            [float(sum(p.detach().double().sum() for p in self.model.parameters()))],
            dtype=torch.float64,
            device=self.device,  # NCCL gathers GPU tensors only
        )
        gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world_size)]
        dist.all_gather(gathered, checksum)
        values = [g.item() for g in gathered]
        self._log({"type": "ddp_check", "param_checksums": values, "identical": len(set(values)) == 1})
        if len(set(values)) != 1:
            raise RuntimeError(f"DDP replicas diverged: parameter checksums {values}")


def train(config: TrainConfig) -> dict[str, Any]:
    """Run a training job described by ``config``; returns a summary (epochs, steps, final metrics)."""
    trainer = Trainer(config)
    finished = False
    try:
        summary = trainer.fit()
        finished = True
        return summary
    finally:
        if trainer.dist.enabled and dist.is_initialized():
            # a failed process must not wait for peers that are still training: they would wait forever
            destroy_process_group_cleanly(wait_for_peers=finished)


__all__ = ["Trainer", "TrainingDiverged", "train"]

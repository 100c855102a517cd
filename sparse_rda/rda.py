"""RDA: adaptively reweighted l1 with generalized regularized dual averaging (Siegel et al. 2020)."""

from __future__ import annotations

import warnings

import torch

from . import nn, plan, reference, sharded, sharded_tiles, step, target
from .optimizer import SparseOptimizer
from .scalars import rda_scalars
from .validation import (check_bool, check_granularity, check_hyper_value, check_nm_target, check_number,
                         check_optional_time)


class RDA(SparseOptimizer):
    r"""Sparse training by reweighted-l1 generalized RDA: the optimizer's own update produces exact zeros.

    Per tensor it keeps float32 state ``T`` (pre-prox iterate), ``B`` (accumulated threshold weights),
    ``A`` (running average of |w|) and ``v`` (momentum), and each step does (docs/ALGORITHMS.md section 1)::

        g  = grad + weight_decay * w
        A  = beta_b * A + (1 - beta_b) * |w|            beta_b = exp(-lr / reweight_time)
        om = M / (1 + (M - 1) * A / max(A))              M = max_factor
        B  = averaging * B + lr * om
        T  = averaging * T + (1 - averaging) * w
        v  = beta * v + (1 - beta) * g                   beta = exp(-lr / momentum_time)
        T  = T - lr * v
        w  = sign(T) * max(|T| - lam * B, 0)

    Args:
        params: parameters or param groups (every option below may be set per group).
        lr: step size ``s``. ``lr=1`` with ``momentum_time=9.5`` behaves like SGD(lr=0.1, momentum=0.9). A float or
            a one-element tensor (``averaging`` too); outside capturable mode a tensor is read on the host.
        lam: penalty strength; the threshold is ``lam * B``.
        momentum_time: momentum time scale ``tau``; ``None`` or 0 means no momentum (``v = g``).
        reweight_time: time scale of the |w| average ``A``; ``None`` means ``momentum_time``, 0 means ``A = |w|``.
        max_factor: ``M``, the largest penalty weight relative to the largest weight's (>= 1).
        reweight: ``False`` gives plain l1 (``om = 1``).
        averaging: ``alpha`` in [0, 1]: 0 is proximal SGD with momentum, 1 is weighted l1-RDA.
        weight_decay: added to the gradient (``p.grad`` is not modified).
        granularity: "element", or for 4-D conv weights "kernel" (mean |w| per kh x kw kernel, ``om`` times
            sqrt(kh*kw)) or "channel" (mean |w| per output filter, ``om`` times sqrt(in*kh*kw)), or for 2-D
            weights ("block", rows, cols): tiles with the RMS as magnitude and the group prox, so whole tiles
            become zero (the step writes ``state["occupancy"]``, which tiles are live); tensors of other shapes
            use "element". Block mode runs on every backend. ("nm", N, M), 1 <= N < M <= 32: at most N nonzeros in
            each group of M consecutive weights along the rows of each weight of 2+ dims (a conv's flattened
            in*kh*kw), the N largest of each group's soft-thresholded weights (2:4 is what sparse tensor cores
            run; docs/ALGORITHMS.md section 3b); with ``target_sparsity`` >= 1 - N/M, sparsity beyond the pattern.
        sparsify_1d: also penalize tensors with fewer than 2 dims (biases, norm scales); off by default.
        maximize: maximize the objective instead.
        backend: "auto" (the native kernels where built, else Triton on CUDA and the reference on CPU; see
            sparse_rda/dispatch.py), "torch" (the reference), or a kernel backend (``sparse_rda.backends()``).
        capturable: the step waits on nothing from the host, for CUDA graphs (kernel backends only): ``lr`` and
            ``averaging`` may be one-element device tensors (update them in place; the schedules do), step
            counters live on the device, and a GradScaler's inf check skips the update inside the kernel.
        target_sparsity: reach this fraction of zeros over the group's penalized tensors by ``total_steps``
            without tuning ``lam``: ``lam`` becomes the starting value of a controller that, at most every
            ``total_steps // 200`` steps (more often while the sparsity drifts), snaps the weights onto a cubic
            ramp to the target, reached at 75% of training and held to the end, and steers ``lam``
            (sparse_rda/target.py). A few host syncs per control step.
        total_steps: the training length in steps; required with ``target_sparsity``.

    A param group may also set ``penalize=False`` (as :func:`sparse_rda.param_groups` does for biases and
    norms): its tensors are trained without a penalty.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        lam: float = 1e-6,
        momentum_time: float | None = 9.5,
        reweight_time: float | None = None,
        max_factor: float = 500.0,
        reweight: bool = True,
        averaging: float = 0.0,
        weight_decay: float = 0.0,
        granularity: str = "element",
        sparsify_1d: bool = False,
        maximize: bool = False,
        backend: str = "auto",
        capturable: bool = False,
        target_sparsity: float | None = None,
        total_steps: int | None = None,
    ):
        defaults = dict(
            lr=lr,
            lam=lam,
            momentum_time=momentum_time,
            reweight_time=reweight_time,
            max_factor=max_factor,
            reweight=reweight,
            averaging=averaging,
            weight_decay=weight_decay,
            granularity=granularity,
            sparsify_1d=sparsify_1d,
            maximize=maximize,
            backend=backend,
            capturable=capturable,
            target_sparsity=target_sparsity,
            total_steps=total_steps,
        )
        super().__init__(params, defaults)

    _CORE_OPTIONS = ("lr", "lam", "max_factor")
    _DEVICE_SCALARS = ("lr", "averaging")

    def _check_hyper(self, group: dict) -> None:
        capturable = self._capturable(group)
        check_hyper_value("lr", group["lr"], capturable)
        check_hyper_value("averaging", group["averaging"], capturable, high=1.0)
        check_number("lam", group["lam"])
        check_optional_time("momentum_time", group["momentum_time"])
        check_optional_time("reweight_time", group["reweight_time"])
        check_number("max_factor", group["max_factor"], low=1.0)
        check_number("weight_decay", group["weight_decay"])
        check_granularity(group["granularity"])
        check_nm_target(group["granularity"], group.get("target_sparsity"))
        for flag in ("reweight", "sparsify_1d", "maximize"):
            check_bool(flag, group[flag])

    @staticmethod
    def _is_penalized(group: dict, p: torch.Tensor) -> bool:
        """RDA spares tensors of < 2 dims (biases, norm scales) unless the group sets ``sparsify_1d``."""
        return group.get("penalize", True) and (p.dim() >= 2 or group["sparsify_1d"])

    def _state_layout(self, group: dict, p: torch.Tensor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        layout = {key: (tuple(p.shape), torch.float32) for key in ("T", "B", "A", "v")}
        tensor_plan = self._plan(group, p)
        if tensor_plan.tiled:
            layout["occupancy"] = (plan.tile_grid(p.shape, tensor_plan.block), torch.bool)
        return layout

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        """First step of a tensor: T = w, B = A = v = 0 (float32 whatever the parameter dtype); in block mode
        also the tile occupancy map."""
        state = self.state[p]
        capturable = self._capturable(group)
        # a float64 scalar, on the host unless capturable: a tensor, so torch.compile does not specialize on it
        state["step"] = torch.zeros((), dtype=torch.float64, device=p.device if capturable else "cpu")
        state["T"] = p.detach().to(torch.float32, copy=True)
        for key in ("B", "A", "v"):
            state[key] = torch.zeros_like(p, dtype=torch.float32)
        block = self._plan(group, p).block
        if block and sharded.is_sharded(p):  # the whole map on every rank (a replicated DTensor)
            state["occupancy"] = sharded.replicated_like(sharded_tiles.initial_map(p, block), p)
        elif block:
            state["occupancy"] = self._shared_map(p, reference.tile_sums(p.detach().float() != 0, block) > 0, block)
        return state

    @staticmethod
    def _shared_map(p: torch.Tensor, tiles: torch.Tensor, block) -> torch.Tensor:
        """The tile map to keep in the state: the map a layer bound to the weight (sparse_rda.nn.bind_tile_map)
        when it has the same tiles, so the step updates what the layer reads; else ``tiles``, with a warning when
        a layer's map of other tiles is left for the user to refresh."""
        bound = nn.tile_map(p)
        if bound is None:
            return tiles
        if tuple(bound[0]) != tuple(block) or bound[1].shape != tiles.shape:
            warnings.warn(f"a layer reads this weight (shape {tuple(p.shape)}) through {tuple(bound[0])} tiles and the "
                          f"optimizer steps it in {tuple(block)} tiles: the layer's map is not updated by the step "
                          "(call sparse_rda.nn.refresh_occupancy after each step, or use the layer's tiles)",
                          stacklevel=4)
            return tiles
        bound[1].copy_(tiles)
        return bound[1]

    def _zero_ratios(self, group: dict, p: torch.Tensor):
        """An element is zero when |T| <= lam B; a tile when ||T_tile|| <= lam B_tile sqrt(tile size). In N:M mode
        an element outside its group's N largest ratios is zero at every scale (a group keeps min(N, its elements
        above the threshold) nonzeros): its ratio counts as 0."""
        T, B = sharded.local(self.state[p]["T"]), sharded.local(self.state[p]["B"])
        tensor_plan = self._plan(group, p)
        block = tensor_plan.block
        if tensor_plan.constrained:
            ratios = target.zero_ratio(T.abs(), B)
            outside = ~reference.nm_keep(ratios, tensor_plan.nm, tensor_plan.row)
            return ratios.masked_fill(outside, 0.0), None
        if block is None:
            return target.zero_ratio(T.abs(), B), None
        if sharded.is_sharded(p):  # (tiles across shards: their norms over every holder, counted once)
            _, norms, B_tile, counts, weights = sharded_tiles.tile_view(p, T, B, block)
            return target.zero_ratio(norms, B_tile * torch.sqrt(counts)), weights
        counts = reference.tile_counts(T.shape, block, T.device)
        norms = torch.sqrt(reference.tile_sums(T * T, block))
        return target.zero_ratio(norms, B[:: block[0], :: block[1]] * torch.sqrt(counts)), counts

    def _threshold_scale(self, group: dict) -> float:
        return float(group["lam"])

    def _sparsity_floor(self, group: dict) -> float:
        """("nm", N, M): 1 - N/M, what the pattern zeroes with no penalty (ragged rows and 1-D tensors a little
        less: the controller's quantile adds what is missing)."""
        pattern = plan.nm_pattern(group["granularity"])
        return 0.0 if pattern is None else 1.0 - pattern[0] / pattern[1]

    def _set_threshold_scale(self, group: dict, penalized: list[torch.Tensor], scale: float) -> None:
        group["lam"] = scale

    def _apply_threshold(self, group: dict, penalized: list[torch.Tensor]) -> None:
        """w = S(T, lam B); in block mode the group prox, and the tile map (a SparseLinear's too) with it."""
        for p in penalized:
            T, B = sharded.local(self.state[p]["T"]), sharded.local(self.state[p]["B"])
            tensor_plan = self._plan(group, p)
            if tensor_plan.tiled and sharded.is_sharded(p):
                sharded_tiles.apply_threshold(p, T, B, sharded.local(self.state[p]["occupancy"]), group["lam"],
                                              tensor_plan.block)
                continue
            w, live = reference.rda_prox(T, group["lam"] * B, tensor_plan)
            if live is not None and "occupancy" in self.state[p]:
                self.state[p]["occupancy"].copy_(live)
            sharded.local(p).copy_(w)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                block = self._plan(group, p).block
                if block and "occupancy" in self.state.get(p, {}):
                    self.state[p]["occupancy"] = self._shared_map(p, self.state[p]["occupancy"], block)

    @staticmethod
    def _sharded_step(backend, params, plans, tensors: step.RdaTensors, scalars) -> torch.Tensor | None:
        """A group step with DTensor params (sparse_rda/sharded.py): the backend on each rank's shards, given the
        reweighting's max over all shards (one collective); tiled weights through sparse_rda/sharded_tiles.py
        (its interior tiles through the backend too)."""
        tiled = [i for i, (p, tensor_plan) in enumerate(zip(params, plans))
                 if tensor_plan.tiled and sharded.is_sharded(p)]
        rest = [i for i in range(len(params)) if i not in set(tiled)]
        parts = []  # (indices, tensors, buckets) stepped by the backend
        tiles = None
        if tiled:
            tiles = sharded_tiles.TiledStep([params[i] for i in tiled], step.pick(tensors, tiled),
                                            [plans[i] for i in tiled], scalars)
            parts.append((tiled, tiles.interior()))
        if rest:
            parts.append((rest, step.pick(tensors, rest)))
        parts = [(idx, part, plan.buckets(tuple(plans[i] for i in idx),
                                          tuple((part.params[j].dtype, part.grads[j].dtype) for j in range(len(idx)))))
                 for idx, part in parts]
        maxes = None
        if scalars.reweight:  # every part's maxes, then one collective
            maxes = torch.zeros(len(params), dtype=torch.float32, device=tensors.params[0].device)
            for idx, part, buckets in parts:
                local_max = step.run(backend.rda_max_A, part, buckets, scalars)
                maxes[idx] = tiles.local_max(local_max) if tiles is not None and idx is tiled else local_max
            sharded.all_reduce(maxes, params, "max")
        counts = []
        for idx, part, buckets in parts:
            given = None if maxes is None else maxes[idx]
            part_counts = step.run(backend.rda_step, part._replace(max_A=given), buckets, scalars)
            if tiles is not None and idx is tiled:
                part_counts = tiles.finish(part, part_counts, given if given is not None else torch.zeros(len(idx)))
            counts.append((idx, part_counts))
        if any(c is None for _, c in counts):
            return None  # (the reference does not count: nnz() counts)
        total = torch.zeros(len(params), dtype=torch.int64, device=counts[0][1].device)
        for idx, part_counts in counts:
            total[idx] = part_counts.to(total.device)
        return total

    def _relink_map(self, p: torch.Tensor, state: dict, block) -> torch.Tensor | None:
        """The state's tile map, adopted again when the layer's map in the same tiles was replaced since (the layer
        moved: ``.to()``, ``.cuda()``), so the step keeps writing the map the layer reads."""
        bound, own = nn.tile_map(p), state.get("occupancy")
        if own is not None and bound is not None and bound[1] is not own and tuple(bound[0]) == tuple(block):
            state["occupancy"] = self._shared_map(p, own, block)
        return state.get("occupancy")

    def _group_step(self, group: dict, backend, params: list[torch.Tensor], grad_scale, found_inf):
        states = [self.state[p] if self.state[p] else self._init_state(p, group) for p in params]
        plans, buckets = self._step_plan(group, params)
        local = sharded.local_lister(params)  # (DTensors: each rank steps its own shards)
        tensors = step.RdaTensors(
            local(params), local([p.grad for p in params]),
            *(local([s[key] for s in states]) for key in ("T", "B", "A", "v")),
            occupancy=local([self._relink_map(p, s, tensor_plan.block) if tensor_plan.tiled else s.get("occupancy")
                             for p, s, tensor_plan in zip(params, states, plans)]),
            group_means=[self._group_means(p, tensor_plan) for p, tensor_plan in zip(params, plans)])
        scalars = rda_scalars(group, grad_scale, found_inf, self._on_device(group), params[0].device)
        steps = self._scalar_rows(params, ("step",))[:, 0]
        if sharded.any_dtensor(params) and sharded.any_sharded(params):
            counts = self._sharded_step(backend, params, plans, tensors, scalars)
        else:
            counts = step.run(backend.rda_step, tensors, buckets, scalars)
        self._count_steps(steps, found_inf)  # after the update: a refused call leaves the counters as they were
        return counts

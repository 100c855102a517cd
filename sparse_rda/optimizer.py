"""Plumbing shared by RDA and GRDA: checks before any change, fp32 state that survives load_state_dict, and
the step loop that hands each param group to its backend."""

from __future__ import annotations

import inspect
import operator
from collections import OrderedDict
from itertools import chain

import torch

from . import dispatch, plan, sharded, sharded_tiles, step, target
from .validation import (check_bool, check_device_scalars, check_grad, check_nm_sharding, check_params, check_state,
                         check_target, same_granularity)


_NO_STATE: dict = {}


class SparseOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses define ``_check_hyper(group)`` (raise on bad values), ``_warn_hyper(group)``
    and ``_group_step(group, backend, params, grad_scale, found_inf)``, which returns
    the params' nonzero counts when the backend counted them (else None). Their elementwise state is float32
    whatever the parameter dtype; scalar counters are float64 tensors (on the host unless capturable)."""

    # torch.amp.GradScaler hands us `grad_scale` and `found_inf` instead of unscaling the grads itself:
    # the kernels divide by the scale in the same pass.
    _step_supports_amp_scaling = True

    # group options without which a saved group is not this class's (a state dict of another optimizer)
    _CORE_OPTIONS: tuple[str, ...] = ("lr",)
    # target_sparsity: how far a control step moves the held threshold scale toward the quantile (target.py)
    _HOLD_GAIN = target.HOLD_GAIN

    def __init__(self, params, defaults: dict):
        self._reset_caches()
        super().__init__(params, defaults)

    def _reset_caches(self) -> None:
        # (stepped params, their shapes and dtypes, the group's layout options) -> (plans, buckets), see _step_plan
        self._plans: dict[tuple, tuple[tuple[plan.TensorPlan, ...], tuple[plan.Bucket, ...]]] = {}
        # id(param) -> its structured mode's group-mean buffer, see _group_means
        self._means: dict[int, torch.Tensor] = {}
        # scalar state rows: param ids + keys -> (buffer, the first key's views), see _scalar_rows
        self._scalars: dict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        # group index -> (its params' state values, (granularity, param addresses)) when last checked, see
        # _check_live_state
        self._checked: dict[int, tuple] = {}
        self._nnz: list[tuple[list[torch.Tensor], torch.Tensor]] = []  # (params, counts) of the last step

    def __setstate__(self, state: dict) -> None:
        """The way back from pickle and deepcopy, and the end of load_state_dict: rebuilds the caches torch's
        ``__getstate__`` leaves out, and gives groups the options a checkpoint predates, with the class's
        defaults (as torch's optimizers do for theirs)."""
        super().__setstate__(state)
        self._reset_caches()
        for group in self.param_groups:
            for key, value in self._class_defaults().items():
                group.setdefault(key, value)

    @classmethod
    def _class_defaults(cls) -> dict:
        """The constructor's keyword defaults: the options every group has."""
        return {name: arg.default for name, arg in inspect.signature(cls.__init__).parameters.items()
                if arg.default is not inspect.Parameter.empty}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
        except Exception:
            self.param_groups.pop()  # leave the optimizer as it was
            raise
        self._warn_hyper(group)

    def _check_group(self, group: dict) -> str:
        """Checks a group and returns the backend that will run it. A step traced by torch.compile skips the
        value checks (its hyper-parameters may be symbolic); they ran when the group was added."""
        if not torch.compiler.is_compiling():
            self._check_options(group)
        check_params(group["params"], self._capturable(group))
        if plan.block_shape(group.get("granularity")) and sharded.any_dtensor(group["params"]):
            for p in group["params"]:
                if sharded.is_sharded(p) and p.dim() == 2:
                    sharded_tiles.check_sharding(p)
        if plan.nm_pattern(group.get("granularity")) and sharded.any_dtensor(group["params"]):
            for p in group["params"]:
                if sharded.is_sharded(p) and p.dim() >= 2:
                    check_nm_sharding(p)
        device = group["params"][0].device if group["params"] else torch.device("cpu")
        if self._capturable(group):
            check_device_scalars(group, self._DEVICE_SCALARS, device)
        dtypes = {p.dtype for p in group["params"]}
        return dispatch.resolve(group["backend"], device, self._capturable(group), dtypes)

    def _check_options(self, group: dict) -> None:
        check_bool("capturable", group.get("capturable", False))
        check_bool("penalize", group.get("penalize", True))
        self._check_hyper(group)
        check_target(group.get("target_sparsity"), group.get("total_steps"), self._capturable(group))

    # options that may be one-element device tensors in capturable mode
    _DEVICE_SCALARS: tuple[str, ...] = ("lr",)

    def _state_layout(self, group: dict, p: torch.Tensor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The state tensors a step reads and writes for ``p``: key -> (shape, dtype), on ``p``'s device."""
        raise NotImplementedError

    def _check_hyper(self, group: dict) -> None:
        raise NotImplementedError

    def _warn_hyper(self, group: dict) -> None:
        pass

    def _group_step(self, group: dict, backend: dispatch.Backend, params: list[torch.Tensor], grad_scale, found_inf):
        """One group's update through ``backend`` (the contract of sparse_rda/step.py); returns the params' nonzero
        counts (device int64) when the backend counts them. found_inf is given only to capturable groups, whose
        kernels skip the update themselves."""
        raise NotImplementedError

    @staticmethod
    def _is_penalized(group: dict, p: torch.Tensor) -> bool:
        """Whether a tensor's weights are thresholded: the class's policy. Every tensor, unless its param group
        opts out with ``penalize=False`` (GRDA, as the authors' code does; RDA adds a rule for 1-D tensors)."""
        return group.get("penalize", True)

    def _plan(self, group: dict, p: torch.Tensor) -> plan.TensorPlan:
        """What a step does with ``p`` (sparse_rda/plan.py), from the group's options and the penalty policy."""
        return plan.tensor_plan(p.shape, group.get("granularity", plan.ELEMENT), self._is_penalized(group, p))

    def _step_plan(self, group: dict, params: list[torch.Tensor]):
        """(plans, buckets) of the params a step updates: cached while those params, their shapes and dtypes (and
        their grads') and the group's layout options stay the same."""
        granularity = group.get("granularity")
        key = (tuple(granularity) if isinstance(granularity, list) else granularity, group.get("penalize", True),
               group.get("sparsify_1d"), tuple([(id(p), p.shape, p.dtype, p.grad.dtype) for p in params]))
        cached = self._plans.get(key)
        if cached is None:
            if len(self._plans) > 64:  # the set of params with grads keeps changing: do not grow without bound
                self._plans.clear()
            plans = tuple(self._plan(group, p) for p in params)
            cached = self._plans[key] = plans, plan.buckets(plans, tuple((p.dtype, p.grad.dtype) for p in params))
        return cached

    def _group_means(self, p: torch.Tensor, tensor_plan: plan.TensorPlan) -> torch.Tensor | None:
        """A structured mode's per-group mean |w| of ``p`` now, for the kernels (None otherwise), in a buffer
        kept per parameter (a DTensor's: of its local part of each group, or of the whole group where the shards
        split groups: sparse_rda/sharded.py)."""
        if not (tensor_plan.grouped and tensor_plan.penalized):
            return None
        means = self._means[id(p)] = sharded.group_means(p, tensor_plan.group_size, self._means.get(id(p)))
        return means

    def _scalar_rows(self, params: list[torch.Tensor], keys: tuple[str, ...]) -> torch.Tensor:
        """A [len(params), len(keys)] float64 buffer whose rows the params' scalar state entries ``keys`` (step
        counters, gRDA's threshold) are views of, so one op updates them all: 62 separate scalars cost ~0.14 ms a
        step on ResNet-18. Rebuilt from the entries' values when the params with gradients change or the entries
        were replaced (load_state_dict)."""
        states = [self.state[p] for p in params]
        cache_key = (tuple(id(p) for p in params), keys)
        cached = self._scalars.get(cache_key)
        if cached is not None and all(s[keys[0]] is view for s, view in zip(states, cached[1])):
            return cached[0]
        rows = torch.stack([torch.stack([s[k] for k in keys]) for s in states])
        for i, state in enumerate(states):
            state.update({k: rows[i, j] for j, k in enumerate(keys)})
        self._scalars[cache_key] = (rows, [s[keys[0]] for s in states])
        return rows

    @staticmethod
    def _count_steps(steps: torch.Tensor, found_inf) -> None:
        """Step counters (a float64 column of _scalar_rows) advance, unless the scaler found infs."""
        steps.add_(1.0 if found_inf is None else (1 - found_inf).double().to(steps.device))

    @staticmethod
    def _capturable(group: dict) -> bool:
        """The group's capturable option. Under torch.compile, dynamo marks every optimizer group capturable
        (its convention for torch's optimizers); a traced step here runs the host-scalar path instead."""
        return group.get("capturable", False) and not torch.compiler.is_compiling()

    def _on_device(self, group: dict) -> bool:
        """Whether this step hands the backends the scalars' device form (sparse_rda/scalars.py): in capturable
        mode, and in any step traced by torch.compile, so that a schedule's new lr (or the controller's lam)
        reaches the graph as a tensor instead of a constant it would recompile for."""
        return self._capturable(group) or torch.compiler.is_compiling()

    def _skips_inside(self, group: dict, backend: str) -> bool:
        """Whether a GradScaler's inf flag goes to the kernels, which then skip the update themselves (no host
        sync): capturable groups, and kernel backends in a traced step (the reference reads it on the host)."""
        return self._on_device(group) and dispatch.backend(backend).capturable

    @torch.no_grad()
    def step(self, closure=None):
        """One step over every param group. All checks run first: a bad value changes nothing.

        Under ``torch.amp.GradScaler`` the step is skipped when the scaler found infs (one host sync, as the
        scaler's own path has; capturable groups skip inside their kernels instead, with no sync), and
        gradients are unscaled inside the update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for g, group in enumerate(self.param_groups):
            backend = self._check_group(group)
            params = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            for p in params:
                check_grad(p)
            if not torch.compiler.is_compiling():  # traced: the state is what dynamo guards on
                self._check_live_state(g, group, params)
            work.append((group, backend, params))
        found_inf = getattr(self, "found_inf", None)
        host_checked = any(params and not self._skips_inside(group, backend) for group, backend, params in work)
        if found_inf is not None and host_checked and found_inf.item():
            return loss
        grad_scale = getattr(self, "grad_scale", None)
        self._nnz = []
        for group, backend, params in work:
            if params:
                inf = found_inf if self._skips_inside(group, backend) else None
                counts = self._group_step(group, dispatch.backend(backend), params, grad_scale, inf)
                if not torch.compiler.is_compiling():  # kernels write through pointers: tell autograd (and caches
                    torch.autograd.graph.increment_version(params)  # keyed on versions, NMLinear's) as in-place ops do
                if counts is not None:
                    self._nnz.append((params, counts))
                if group.get("target_sparsity") is not None:
                    self._steer_sparsity(group, params)
        return loss

    # The controller's decisions are host-side (step counts, quantiles, a Python lam), so under torch.compile it
    # runs eagerly, outside the graph: one graph break after the update, in groups with target_sparsity only.
    @torch.compiler.disable
    def _steer_sparsity(self, group: dict, stepped: list[torch.Tensor]) -> None:
        """With ``target_sparsity``, decide whether this step is a control step (sparse_rda/target.py): every
        ``target_interval`` steps, or at once after an lr jump."""
        wanted = group["target_sparsity"]
        penalized = [p for p in group["params"] if self._is_penalized(group, p) and self.state[p]]
        if not penalized:
            return
        step, total = max(int(self.state[p]["step"]) for p in penalized), group["total_steps"]
        interval = target.current_interval(group.get("target_interval"), total)
        lr = float(group["lr"])
        if target.is_control_step(step, total, interval) or target.lr_jumped(lr, group.get("target_lr")):
            scheduled = target.scheduled_sparsity(step, total, wanted, self._sparsity_floor(group))
            drift = self._control_step(group, penalized, stepped, scheduled, first=step <= target.control_interval(total))
            group["target_interval"] = target.next_interval(interval, drift, total)
            group["target_lr"] = lr

    def _control_step(self, group: dict, penalized: list[torch.Tensor], stepped: list[torch.Tensor],
                      scheduled: float, first: bool) -> float:
        """Snap the weights this step updated (``stepped``) onto the ``scheduled`` fraction of zeros over the
        group's penalized tensors and hold a scale a step closer to the one that does it. Returns how far from
        ``scheduled`` the scale held so far had let the sparsity drift. Params without a grad this step keep
        their weights (torch's contract) but count."""
        held = self._threshold_scale(group)
        quantile, held_fraction = self._units(group, penalized).quantile_and_fraction(scheduled, held)
        quantile *= target.ROUND_UP
        drift = abs(held_fraction - scheduled)  # what the held scale gave
        self._set_threshold_scale(group, penalized, quantile)
        snapped = set(map(id, stepped))
        self._apply_threshold(group, [p for p in penalized if id(p) in snapped])
        # the kernel counted the weights before the snap: nnz() counts these again
        self._nnz = [(params, counts) for params, counts in self._nnz if not any(id(p) in snapped for p in params)]
        self._set_threshold_scale(group, penalized, target.held_scale(held, quantile, first, self._HOLD_GAIN))
        return drift

    def _sparsity_floor(self, group: dict) -> float:
        """The sparsity the group's penalized tensors have at any threshold scale (the controller's ramp starts
        there): 0, but for RDA's N:M patterns."""
        return 0.0

    def _units(self, group: dict, penalized: list[torch.Tensor]) -> target.Units:
        """The group's penalized units for the controller's quantile: one part per set of process groups the
        tensors are sharded over (one in one process), whose histograms add up over those shards."""
        units = []
        for groups, params in sharded.by_groups(penalized, sharded.reduce_groups, keep_unsharded=True).items():
            members = [(p, *self._zero_ratios(group, p)) for p in params]
            ratios = torch.cat([r.flatten() for _, r, _ in members])
            sizes = None if all(z is None for _, _, z in members) else torch.cat(
                [torch.ones_like(r).flatten() if z is None else z.flatten() for _, r, z in members])
            units.append((ratios, sizes, sharded.reducer(groups)))
        return target.Units(units)

    def _zero_ratios(self, group: dict, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per unit of ``p`` (element, or tile: then also the tiles' sizes) the threshold scale from which the
        last step would have zeroed it."""
        raise NotImplementedError

    def _set_threshold_scale(self, group: dict, penalized: list[torch.Tensor], scale: float) -> None:
        raise NotImplementedError

    def _threshold_scale(self, group: dict) -> float:
        """The scale the group's thresholds are linear in (RDA's ``lam``, gRDA's ``c``)."""
        raise NotImplementedError

    def _apply_threshold(self, group: dict, penalized: list[torch.Tensor]) -> None:
        """This step's weights again from the state, thresholded with the group's threshold scale now: as if the
        step had used it."""
        raise NotImplementedError

    @torch.no_grad()
    def nnz(self) -> dict[torch.Tensor, int]:
        """Nonzero count of every parameter. The fused kernels count them during the step, so this costs one
        host sync and no pass over the weights; parameters the last step did not count are counted here. A
        DTensor's count is over all its shards (one collective: every rank must call this)."""
        counted: dict[torch.Tensor, torch.Tensor] = {}
        for params, counts in self._nnz:
            counted.update(zip(params, counts.unbind()))
        params = [p for group in self.param_groups for p in group["params"]]
        given = {i: counted[p] for i, p in enumerate(params) if p in counted}
        return dict(zip(params, sharded.count_nonzeros(params, given)))

    def _check_live_state(self, g: int, group: dict, params: list[torch.Tensor]) -> None:
        """Before a step changes anything: the state of each param fits it (as load_state_dict checks), so that
        state replaced by hand between steps fails the step with nothing changed. Checked in full only when an
        entry of the group's state was replaced or added, a param's data was replaced (``p.data = ...``: a new
        address) or the granularity changed; otherwise a step pays an identity comparison per state tensor and
        an address per param (reading shapes and dtypes costs ~2 us a param, 0.1 ms a step on ResNet-18)."""
        seen = [v for p in params for v in self.state.get(p, _NO_STATE).values()]
        where = (group.get("granularity"), [sharded.local(p).data_ptr() for p in params])
        last = self._checked.get(g)
        if (last is not None and last[1] == where and len(last[0]) == len(seen)
                and all(map(operator.is_, last[0], seen))):
            return
        for i, p in enumerate(params):
            state = self.state.get(p)
            if state:  # (new params are initialised by this step)
                check_state(f"state of param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)})", state,
                            self._state_layout(group, p), self._HOST_SCALARS, device=p.device, param=p)
        self._checked[g] = (seen, where)

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, with checks first and three differences. (1) Nothing loads unless everything fits: the
        groups are this class's, with the same granularity and valid options, and each state fits its parameter.
        (2) State tensors keep their saved dtype (float32 or float64 state, a bool tile map): torch casts them
        to the parameter dtype, which would round a bf16 model's optimizer state. They go to the parameter's
        device, except the host-side scalars of ``_host_state_keys``; counters saved as Python numbers become
        float64 tensors. (3) Each group keeps its own ``backend`` (a choice of this machine, not of the run);
        options the checkpoint predates get the class defaults. Load pre-hooks run first, as torch's do: the
        checks see (and the loader loads) the state dict they return."""
        state_dict = state_dict.copy()  # shallow, as torch's
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        self._check_saved_state(saved_groups, saved_state)
        backends = [group["backend"] for group in self.param_groups]
        before = self.state, self.param_groups, self._scalars, self._checked, self._nnz
        hooks, self._optimizer_load_state_dict_pre_hooks = self._optimizer_load_state_dict_pre_hooks, OrderedDict()
        try:
            self._load_checked(state_dict, saved_groups, saved_state, backends)
        except BaseException:  # nothing half-loaded (the checks above should leave nothing to fail here)
            self.state, self.param_groups, self._scalars, self._checked, self._nnz = before
            raise
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks  # they ran above, once

    def _load_checked(self, state_dict, saved_groups, saved_state, backends) -> None:
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in saved_groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        group_of = {p: group for group in self.param_groups for p in group["params"]}
        for group, backend in zip(self.param_groups, backends):
            group["backend"] = backend
        for saved_id, p in zip(saved_ids, params):
            host_keys = self._host_state_keys(group_of[p])
            for key, value in saved_state.get(saved_id, {}).items():
                device = torch.device("cpu") if key in host_keys else p.device
                if isinstance(value, torch.Tensor):
                    self.state[p][key] = value.to(device=device, copy=True)
                elif key in self._HOST_SCALARS:
                    self.state[p][key] = torch.tensor(float(value), dtype=torch.float64, device=device)

    def _check_saved_state(self, saved_groups: list[dict], saved_state: dict) -> None:
        """Before anything is loaded: each saved group is one of this class's with this group's granularity and
        valid options, and each saved state fits its parameter (tensors of the shapes and dtypes the step reads
        and writes, the scalar entries present), so a checkpoint from elsewhere cannot feed a kernel a
        mis-shaped tensor. The error names the group (the index and the key); the optimizer stays as it was."""
        name = type(self).__name__
        for g, (saved_group, group) in enumerate(zip(saved_groups, self.param_groups)):
            where = f"state_dict: param_groups[{g}]"
            missing = [key for key in self._CORE_OPTIONS if key not in saved_group]
            if missing:
                raise ValueError(f"{where} is not a {name} group: it has no {', '.join(map(repr, missing))} (its "
                                 f"keys: {sorted(saved_group)}); was the state dict saved by another optimizer?")
            options = {**self._class_defaults(), **saved_group, "backend": group["backend"]}
            if "granularity" in group and not same_granularity(options["granularity"], group["granularity"]):
                raise ValueError(f"{where} was saved with granularity={options['granularity']!r}; this optimizer's "
                                 f"group has granularity={group['granularity']!r}: build it with the saved one")
            try:
                self._check_options(options)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
            for i, (saved_id, p) in enumerate(zip(saved_group["params"], group["params"])):
                if saved_state.get(saved_id):
                    check_state(f"{where}['params'][{i}] (shape {tuple(p.shape)})",
                                saved_state[saved_id], self._state_layout(options, p), self._HOST_SCALARS, param=p)

    # scalar state kept on the host (float64 tensors) outside capturable mode, whatever the parameter's device
    _HOST_SCALARS = ("step",)

    def _host_state_keys(self, group: dict) -> tuple[str, ...]:
        return () if self._capturable(group) else self._HOST_SCALARS

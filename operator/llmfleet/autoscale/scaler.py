"""The autoscaler's decision: how many replicas a ModelDeployment should have now.

Pure and synchronous: ``decide(policy, observation, state) -> Decision``. The operator
calls it every few seconds for each ModelDeployment with ``spec.autoscaling``, writes
``decision.desired`` to ``spec.replicas``, ``decision.reason`` to
``status.scaleReason``, turns ``decision.limited`` into the ``ScalingLimited``
condition, emits ``decision.event`` when the count changes, and keeps
``decision.state`` in memory for the next call. Times are seconds on the clock of
``ModelLoad.time`` (monotonic); nothing here reads a clock.

How one decision is made (target tracking, like Kubernetes' HorizontalPodAutoscaler):

0. **SLO mode.** With ``slo_ttft`` the target is learned first (``_learn``): the most
   requests in flight per replica seen while the TTFT p95 held the objective and
   nothing waited, less the
   tolerance band, from the configured target up, capped by what met the objective
   when it was missed with nothing waiting. What was learned ends the reason.

1. **Recommendation.** ``total`` = the metric per replica x the replicas sampled (the
   ready ones that answered the scrape). Decisions size for the **level**: the mean
   of the fresh totals over the last ``trend_window`` (60 s, Knative's stable window)
   plus one standard deviation of them (never above the highest of them). One sample
   of requests in flight is noisy (arrivals come at random: at 25 in flight a sample
   is off by 20 % one time in three): sizing on samples either flaps or holds for the
   highest one, and sizing on the mean alone leaves the batches overflowing half the
   time. While the total falls (a slope as significant as the look-ahead's rise, 1a,
   by a replica's worth or more per trend window; a fall once seen lasts while the
   slope stays ``FALL_HOLD_Z`` standard error below 0, so one sample that blurs it
   brings neither the lagging mean nor the spare back),
   the mean is half a window behind it, so the level is the least-squares line's value
   now plus one standard deviation of the samples around the line (or the latest sample,
   if higher), when that is lower: replicas go as the load leaves them (a burst's ramp
   down), not half a window later.
   ``ceil(level / target)`` replicas would hold the metric at its per-replica
   target. If ``level / (target x replicas)`` is within the tolerance band (default
   10 %) of 1, the recommendation is the current count: small wobbles never move
   anything. It rises above the current count only while the latest sample is above
   the band too (the level of a load that just ended is not a reason to add
   replicas), and once the level is of at least ``MIN_LEVEL_SAMPLES`` (3) fresh
   samples (one sample after a start is no level); without a scale-down stabilization
   window, it falls below the current count only on such a level too.
   **Panic** (Knative's name): a sample at least ``panic_threshold`` (2) times what
   the current replicas hold at the target is answered at once, sized for that
   sample, and nothing scales down for the next ``trend_window``: a sudden rise is
   not averaged away. (The replicas that hold it are those that serve, the spare ones
   aside; after a fall let the spare go, every replica serves until the count grows
   again, or holds the level and the spare once the fall is over.)
   With ``headroomPercent`` the replicas are sized for ``target / (1 + headroom)``
   instead: spare capacity held for the next rise, named in every reason;
   ``spareReplicas`` are held on top (even at low load, for a step), except while the
   load falls (as above: a trough's noise can pass the trend test, but not by a
   replica's worth), from when the level is under the band of the replicas that serve
   without the spare (a plateau's noise can look like a fall, with the load still on
   them) to the end of the fall: a
   rise is not under way then, and the spare is asked for again once the fall ends,
   one model load before it can be needed, for the load there is then (not the level
   a minute's mean leaves behind). When a rise reaches the spare (the last two samples
   over the band of the replicas that serve), its replacement is asked for at once,
   not once the level shows the rise. ``maxReplicas`` bounds the spare, not the
   replicas that serve: near it, the replicas the level needs serve and only what is
   left over is spare (so a peak at the bound is no panic). Replicas that
   exist but are not ready yet count as capacity on the way: while a model loads,
   the load it will take is not asked for again. Two metrics see past what an engine
   exports:

   - ``runningRequests`` counts the requests waiting for a batch slot too: a full
     batch hides any further demand (running stops at max-num-seqs while hundreds
     wait), so the total is the requests in flight, running or waiting.
   - ``queueDepth`` is 0 below saturation however busy the replicas are, so it
     never recommends fewer replicas than the running requests fill: running /
     the per-replica batch last seen full (a queue beside it), when one was seen.
1a. **Look-ahead.** A new replica serves only after it starts (``startup_seconds``,
   measured from the ModelDeployment's own pods: creation to Ready). When the total
   has risen steadily over the last ``trend_window`` (a least-squares slope at
   least ``trend_significance`` standard errors above 0, and a rise across the
   window wider than the tolerance band of the total), the recommendation is
   also computed for the total projected that far ahead (from the fitted line, so
   one noisy sample moves it little), and the higher one wins:
   the replicas asked for on a ramp are ready when the load gets there, instead of
   one startup time late. The projection only ever adds replicas.
1b. **Routed demand.** A backend that cost routing wants to carry more than it does
   now (``routed_load``: the policies' ``demandTokensPerSecond`` over the replicas'
   learned capacity at the target, in replicas' worth) is recommended that many
   replicas at once (within the tolerance band), so the cheap backend grows in one
   step while the dearer ones take the overflow; it only ever raises the
   recommendation.
2. **Stale signals never scale down.** With no usable load (nothing scraped), the
   count holds. With a partial or old one (some ready replica did not answer), the
   recommendation may rise on what was seen but never falls below the current count.
3. **Stabilization.** Every recommendation is remembered with its time. Scale up to
   the lowest recommendation of the last ``scaleUpStabilizationSeconds`` (0: at
   once); scale down to the highest of the last ``scaleDownStabilizationSeconds``,
   and never before a full window has been observed (also after an operator
   restart).
   A panic also holds off any scale-down for one ``trend_window``, and so does a
   rising forecast (1a): a replica removed on the way up is wanted back a load time later.
   Nor is the count lowered while the replicas its last change asked for still load
   (within one measured startup time of it): a dip in a ramp would otherwise throw away
   a load that is about to be needed.
4. **Rate.** Within any ``scale_up_period`` (15 s) the count grows at most to
   ``max(2 x n, n + 4)``, n being the count at the start of the period (the HPA's
   default scale-up policy).
5. **Bounds.** The result is clamped to ``[minReplicas, maxReplicas]``; changing the
   bounds applies at once.
6. **Scale to zero.** With ``scaleToZero.idleSeconds`` > 0, a ModelDeployment with no
   request queued, running or finished for that long (on a fresh signal) goes to
   0; from 0 it returns to ``max(1, minReplicas)`` as soon as a request waits at the
   activator (``wake``) or any load is seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Generic, TypedDict, TypeVar

from typing_extensions import Unpack

from llmfleet.api.models import Autoscaling
from llmfleet.signals.values import ModelLoad

# Event reasons (constant, as Kubernetes events want them).
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"

# ScalingLimited condition reasons, the HPA's.
TOO_MANY_REPLICAS = "TooManyReplicas"
TOO_FEW_REPLICAS = "TooFewReplicas"
SCALE_UP_LIMIT = "ScaleUpLimit"

# Fresh samples the level needs before it may add replicas (a panic needs only one).
MIN_LEVEL_SAMPLES = 3
# A fall, once significant, lasts while its slope stays this many standard errors below 0.
FALL_HOLD_Z = 1.0


class Knobs(TypedDict, total=False):
    """The ScalingPolicy fields that are not in the CRD (operator flags, tests)."""

    tolerance: float
    scale_up_factor: float
    scale_up_pods: int
    scale_up_period: float
    max_signal_age: float
    trend_window: float
    trend_significance: float
    max_lookahead: float
    panic_threshold: float


@dataclass(frozen=True)
class ScalingPolicy:
    """What the scaler holds a ModelDeployment to: ``spec.autoscaling`` plus our own knobs.

    The knobs after ``idle_seconds`` are not in the CRD; their defaults are the
    HorizontalPodAutoscaler's, so the behaviour is the one platform teams already know.
    """

    min_replicas: int
    max_replicas: int
    metric: str  # the CRD's name: queueDepth | runningRequests | kvCacheUtilization | tokensPerSecond
    target: float  # per replica
    scale_up_window: float = 0.0  # seconds; scaleUpStabilizationSeconds
    scale_down_window: float = 300.0  # seconds; scaleDownStabilizationSeconds
    idle_seconds: float = 0.0  # scaleToZero.idleSeconds; 0 never scales to zero
    headroom: float = 0.0  # headroomPercent / 100: spare capacity held above the load
    spare: int = 0  # spareReplicas: replicas held beyond what the load asks for
    slo_ttft: float | None = None  # slo.ttftP95Milliseconds / 1000: the target is learned (SLO mode)
    # No change while |total / (target x replicas) - 1| <= tolerance (the HPA's 0.1).
    tolerance: float = 0.1
    # Growth within any scale_up_period: to at most max(ceil(n x factor), n + pods).
    # Doubling keeps a big fleet's reaction proportional (1 -> 1000 in under 2.5 min);
    # +4 lets a small one jump at once (1 -> 5); the period bound stops one bad sample
    # from ordering a whole GPU pool.
    scale_up_factor: float = 2.0
    scale_up_pods: int = 4
    scale_up_period: float = 15.0
    # A ModelLoad older than this is stale: it may still raise replicas, never lower them.
    max_signal_age: float = 60.0
    # Look-ahead (1a): the slope of the total over this window, projected by the
    # replicas' startup time when it is this many standard errors above 0.
    trend_window: float = 60.0
    trend_significance: float = 3.0
    # Projections never look further than this, however slow replicas start.
    max_lookahead: float = 600.0
    # A sample this many times what the replicas hold at the target is answered at
    # once (Knative's panic threshold, 200 %); smaller rises wait for the level.
    panic_threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise ValueError(f"need 1 <= minReplicas <= maxReplicas, got {self.min_replicas}..{self.max_replicas}")
        if not self.target > 0:
            raise ValueError(f"target must be > 0, got {self.target}")
        if self.headroom < 0 or self.spare < 0:
            raise ValueError(f"headroom and spare replicas must be >= 0, got {self.headroom}, {self.spare}")
        if self.tolerance < 0 or self.scale_up_factor < 1 or self.scale_up_pods < 1:
            raise ValueError("tolerance >= 0, scale_up_factor >= 1 and scale_up_pods >= 1 are required")
        if self.panic_threshold <= 1 + self.tolerance:
            raise ValueError(f"the panic threshold must be above 1 + tolerance, got {self.panic_threshold}")
        if min(self.scale_up_window, self.scale_down_window, self.idle_seconds, self.scale_up_period,
               self.trend_window, self.max_lookahead) < 0:
            raise ValueError("windows and periods must be >= 0")

    @classmethod
    def from_autoscaling(cls, autoscaling: Autoscaling, **knobs: Unpack[Knobs]) -> ScalingPolicy:
        """The policy for a parsed ``spec.autoscaling``; ``knobs`` override our own defaults."""
        policy = cls(
            min_replicas=autoscaling.min_replicas,
            max_replicas=autoscaling.max_replicas,
            metric=autoscaling.metric.value,
            target=autoscaling.effective_target,
            scale_up_window=float(autoscaling.scale_up_stabilization_seconds),
            scale_down_window=float(autoscaling.scale_down_stabilization_seconds),
            idle_seconds=float(autoscaling.scale_to_zero.idle_seconds),
            headroom=autoscaling.headroom_percent / 100,
            spare=autoscaling.spare_replicas,
            slo_ttft=autoscaling.slo.ttft_p95_milliseconds / 1000 if autoscaling.slo else None,
        )
        return replace(policy, **knobs) if knobs else policy

    @property
    def scale_to_zero(self) -> bool:
        return self.idle_seconds > 0

    @property
    def sized_target(self) -> float:
        """The per-replica value replicas are sized for: the target less the headroom."""
        return self.target / (1 + self.headroom)

    def scale_up_limit(self, base: int) -> int:
        """The most replicas a period that started at ``base`` replicas may end with."""
        return max(math.ceil(base * self.scale_up_factor), base + self.scale_up_pods)


@dataclass(frozen=True)
class Observation:
    """What the operator sees of one ModelDeployment when it asks for a decision."""

    now: float  # same clock as ModelLoad.time
    replicas: int  # spec.replicas: the count asked for so far
    ready_replicas: int = 0
    starting_replicas: int = 0  # exist but are not ready yet (scheduling, pulling, loading the model)
    load: ModelLoad | None = None  # None: nothing scraped (yet)
    wake: bool = False  # the activator holds a request for this model (which is at 0 replicas)
    startup_seconds: float | None = None  # how long a new replica takes to get ready (None: not known yet)
    routed_load: float | None = None  # what cost routing wants it to carry, in replicas' worth at the target


@dataclass(frozen=True)
class SloMemory:
    """SLO mode: what the scaler has learned of the requests in flight per replica that
    meet the objective."""

    capacity: float  # the target it sizes for
    why: str  # how that was learned (for the reason)
    ceiling: float | None = None  # at most this: the objective missed with nothing waiting
    queued: bool = False  # the last fresh sample had requests waiting


@dataclass(frozen=True)
class ScalerState:
    """What one ModelDeployment's scaler remembers between decisions (in memory only).

    A fresh state after an operator restart is safe: scale-down waits a full window
    again and the idle clock restarts, so a restart never removes replicas early.
    """

    since: float | None = None  # first decision of this memory (or the wake from zero)
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommendation), oldest first
    replicas_seen: tuple[tuple[float, int], ...] = ()  # (time, spec.replicas) over the rate period
    last_scale_time: float | None = None  # when a decision last changed the count
    active_at: float | None = None  # latest evidence of a request (or `since`)
    history: tuple[tuple[float, float], ...] = ()  # (time, total) of fresh readings over the trend window
    panic_until: float | None = None  # no scale-down before then: a panic was answered
    full_batch: float | None = None  # running requests per replica last seen with a queue beside them
    falling: bool = False  # the load was falling at the last fresh reading
    spare_released: bool = False  # the spare replicas were let go for that fall
    spare_missing: bool = False  # ... and the count has not grown since
    slo: SloMemory | None = None  # SLO mode only


S = TypeVar("S")


@dataclass(frozen=True)
class ScaleEvent:
    """A Kubernetes Event for a change of the replica count."""

    reason: str  # ScaledUp | ScaledDown
    message: str  # "2→5: queueDepth 18.0 over target 4×2"
    type: str = "Normal"

    @property
    def text(self) -> str:
        return f"{self.reason} {self.message}"


@dataclass(frozen=True)
class Decision(Generic[S]):
    """The replica count to ask for now, and why."""

    current: int  # spec.replicas when the decision was taken
    desired: int
    reason: str  # for status.scaleReason and the event
    limited: str | None  # why the count is held at a bound or the rate limit (ScalingLimited message)
    limited_reason: str | None  # TooManyReplicas | TooFewReplicas | ScaleUpLimit
    recommendation: int  # this interval's recommendation (within the bounds), before stabilization and rate
    state: S = field(repr=False)

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    @property
    def event(self) -> ScaleEvent | None:
        """ScaledUp/ScaledDown "2→5: <reason>" when the count changes, else None."""
        if not self.changed:
            return None
        reason = SCALED_UP if self.desired > self.current else SCALED_DOWN
        return ScaleEvent(reason, f"{self.current}→{self.desired}: {self.reason}")


def decide(policy: ScalingPolicy, obs: Observation, state: ScalerState | None = None) -> Decision[ScalerState]:
    """The desired replica count for one interval (see the module docstring for the rules)."""
    state = state or ScalerState()
    now, current, load = obs.now, obs.replicas, obs.load
    since = state.since if state.since is not None else now
    active_at = _activity(obs, state.active_at if state.active_at is not None else since)

    if current == 0:
        return _from_zero(policy, obs, state, since, active_at)

    reading = _read(policy, obs, state)
    if (
        policy.scale_to_zero
        and reading.fresh
        and not obs.wake
        and not _busy(load)
        and now - active_at >= policy.idle_seconds
    ):
        reason = f"no requests for {now - active_at:.0f} s (scaleToZero.idleSeconds {policy.idle_seconds:g})"
        new = ScalerState(since=since, last_scale_time=now, active_at=active_at, slo=state.slo)
        return Decision(current, 0, reason, None, None, 0, new)

    # 1-2. This interval's recommendation (in SLO mode, at the target learned so far).
    memory = _learn(policy, obs, reading, state.slo)
    if memory is not None:
        policy = replace(policy, target=memory.capacity)
    spare = _spare(policy, reading, state, current)
    policy = replace(policy, spare=spare.held)
    panic = denied = False
    spare_in_use = spare_back = None
    if reading.total is None or reading.level is None:
        rec = current
    else:
        rec = _needed(reading.level, policy)
        now_ratio = _ratio(reading.total, policy, current)
        panic_ratio = _ratio(reading.total, replace(policy, spare=0), current) if spare.missing else now_ratio
        panic = reading.total > 0 and math.isfinite(panic_ratio) and panic_ratio >= policy.panic_threshold
        if panic:
            rec = max(rec, _needed(reading.total, policy))
        elif abs(_ratio(reading.level, policy, current) - 1) <= policy.tolerance:
            rec = current
        elif rec > current and now_ratio <= 1 + policy.tolerance:
            rec, denied = current, True  # the level of a load that has passed, or a rise the sample denies
        elif (rec > current or not policy.scale_down_window) and reading.fresh \
                and reading.samples < MIN_LEVEL_SAMPLES:
            # One or two samples are no level yet (a start, a restart): no rise on them, nor a
            # fall where no stabilization window would wait for more.
            rec, denied = current, True
        if policy.spare and current > policy.spare and not panic and reading.fresh and len(reading.history) >= 2:
            # The spare in use: the last two samples over the band of the replicas that
            # serve mean a rise has reached the spare, which is there to carry it for one
            # model load. Its replacement is asked for now, not once the level (a minute's
            # mean) shows the rise; one sample over the band is noise often enough.
            recent = min(reading.total, reading.history[-2][1])
            wanted = _needed(recent, policy)
            if _ratio(recent, policy, current) > 1 + policy.tolerance and wanted > rec:
                rec, spare_in_use = wanted, recent
        if spare.missing and not panic and rec > current:
            # The spare asked for again as the fall ends: for the load there is now, not the
            # level a minute's mean leaves behind. (The latest sample is over the band here,
            # else the rise was denied above, so this still grows the count.)
            back = _needed(reading.total, policy)
            if back < rec:
                rec, spare_back = max(current, back), reading.total
        if reading.floor is not None:
            rec = max(rec, min(reading.floor, current))
        if not reading.fresh:
            rec = max(rec, current)
        if reading.ahead is not None:
            ahead = _needed(reading.ahead, policy)
            if _ratio(reading.ahead, policy, current) <= 1 + policy.tolerance:
                ahead = min(ahead, current)  # the band holds, as it does for the total
            rec = max(rec, ahead)
    routed = math.ceil(obs.routed_load * (1 + policy.headroom) / (1 + policy.tolerance)) if obs.routed_load else None
    if routed is not None and routed > rec:
        rec = routed
    else:
        routed = None
    unbounded = rec
    if spare.capped:
        unbounded += spare.asked - spare.held  # the spare maxReplicas left no room for: ScalingLimited says so
    rec = _clamp(rec, policy)

    # 3. Stabilization windows over the remembered recommendations.
    horizon = max(policy.scale_up_window, policy.scale_down_window)
    recs = (*tuple((t, r) for t, r in state.recommendations if t > now - horizon), (now, rec))
    up_rec = min(r for t, r in recs if t > now - policy.scale_up_window or t == now)
    down_rec = max(r for t, r in recs if t > now - policy.scale_down_window or t == now)
    window_covered = now - since >= policy.scale_down_window
    panic_until = now + policy.trend_window if panic else state.panic_until
    calm = panic_until is None or now >= panic_until
    rising = reading.slope > 0  # the forecast rises: a replica removed now is wanted back
    loading = _loading(obs, state)
    if up_rec > current:
        candidate = up_rec
    elif down_rec < current and window_covered and calm and not rising and loading is None:
        candidate = down_rec
    else:
        candidate = current

    # 4. Rate of growth, from the smallest count asked for within the period.
    seen = (*tuple((t, n) for t, n in state.replicas_seen if t > now - policy.scale_up_period), (now, current))
    base = min(n for _, n in seen)
    cap = policy.scale_up_limit(base)
    limited = limited_reason = None
    if candidate > cap and cap < policy.max_replicas:  # else maxReplicas is what binds
        candidate = cap
        limited_reason = SCALE_UP_LIMIT
        limited = f"scale-up rate limit: at most {cap} replicas within {policy.scale_up_period:g} s (from {base})"

    # 5. Bounds.
    desired = _clamp(candidate, policy)
    if limited is None and desired == policy.max_replicas:
        if unbounded > policy.max_replicas:
            limited_reason, limited = TOO_MANY_REPLICAS, f"wants {unbounded} replicas; maxReplicas is {desired}"
        elif current > policy.max_replicas:
            limited_reason, limited = TOO_MANY_REPLICAS, f"spec.replicas was {current}; maxReplicas is {desired}"
    if limited is None and desired == policy.min_replicas:
        if unbounded < policy.min_replicas:
            limited_reason, limited = TOO_FEW_REPLICAS, f"wants {unbounded} replicas; minReplicas is {desired}"
        elif current < policy.min_replicas:
            limited_reason, limited = TOO_FEW_REPLICAS, f"spec.replicas was {current}; minReplicas is {desired}"

    reason = _reason(policy, obs, reading, rec, up_rec, down_rec, window_covered, desired, panic, denied,
                     None if calm else panic_until, loading, spare.missing)
    if routed is not None:
        reason += f"; cost routing wants {routed} replicas' worth of its traffic here"
    if spare_in_use is not None and desired > current:
        serving = current - policy.spare
        reason += (f"; the last 2 samples, {_num(spare_in_use)} or more, are over what the {serving} serving "
                   f"{'replica holds' if serving == 1 else 'replicas hold'}: the spare is in use, its replacement "
                   f"asked for")
    if spare_back is not None:
        reason += (f"; the spare asked for again as the fall ends, for the {_num(spare_back)} now "
                   f"(the level lags a fall)")
    if spare.released:
        reason += f"; falling {_num(-reading.slope)}/s: no spare replica held until the fall ends"
    elif spare.capped:
        reason += (f"; maxReplicas {policy.max_replicas} leaves room for {spare.held} of the {spare.asked} "
                   f"spare {'replica' if spare.asked == 1 else 'replicas'}")
    if memory is not None and policy.slo_ttft is not None:
        reason += f"; target {memory.capacity:.3g} for TTFT p95 ≤ {policy.slo_ttft * 1000:g} ms: {memory.why}"
    # Once the fall is over, a count that holds the level and the spare has the spare back.
    spare_held = not reading.falling and reading.level is not None and _needed(reading.level, policy) <= desired
    new = ScalerState(
        since=since,
        recommendations=recs,
        replicas_seen=seen,
        last_scale_time=now if desired != current else state.last_scale_time,
        active_at=active_at,
        history=reading.history,
        panic_until=panic_until,
        full_batch=reading.full_batch,
        falling=reading.falling if reading.fresh else state.falling,
        spare_released=spare.released if reading.fresh else state.spare_released,
        spare_missing=spare.missing and (spare.released or desired <= current) and not spare_held,
        slo=memory,
    )
    return Decision(current, desired, reason, limited, limited_reason, rec, new)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Reading:
    total: float | None  # metric summed over the sampled replicas; None: no usable signal
    fresh: bool
    why: str = ""  # what is wrong with the signal, when it is not fresh
    level: float | None = None  # what decisions size for: mean + 1 s.d. of the fresh totals over the trend window
    samples: int = 1  # the fresh totals that level is of
    mean: float = 0.0
    spread: float = 0.0  # their standard deviation
    floor: int | None = None  # queueDepth: replicas the running requests fill
    ahead: float | None = None  # the total projected one startup time ahead, when it is rising
    slope: float = 0.0  # per second, when it rises (significantly) or falls (see `falling`)
    fitted: bool = False  # the level follows the falling line (its value now + 1 s.d., or the latest sample)
    falling: bool = False  # over the trend window: significantly, or still after it was (FALL_HOLD_Z)
    horizon: float = 0.0  # seconds looked ahead, when `ahead` is set
    history: tuple[tuple[float, float], ...] = ()  # for the next state
    full_batch: float | None = None  # for the next state


def _read(policy: ScalingPolicy, obs: Observation, state: ScalerState) -> _Reading:
    load = obs.load
    history = tuple((t, x) for t, x in state.history if t > obs.now - policy.trend_window)
    full_batch = state.full_batch
    if load is None:
        return _Reading(None, False, "no load signal yet", history=history, full_batch=full_batch)
    if load.sampled_replicas <= 0:
        if load.failed_replicas:
            why = f"no load signal: none of {load.failed_replicas} ready replicas answered"
        else:
            why = "no load signal: no ready replica to sample"
        return _Reading(None, False, why, history=history, full_batch=full_batch)
    n = load.sampled_replicas
    total = max(0.0, load.per_replica(policy.metric)) * n
    if load.queue_depth >= 1 and load.running_requests > 0:
        full_batch = load.running_requests
    floor = None
    if policy.metric == "queueDepth" and full_batch:
        floor = _raw_replicas(load.running_requests * n, full_batch)
    age = obs.now - load.time
    if age > policy.max_signal_age:
        why = f"load signal is {age:.0f} s old"
    elif not load.fresh:
        why = f"{load.failed_replicas} of {n + load.failed_replicas} ready replicas not scraped"
    else:
        history = (*history, (load.time, total))
        line = _trend(history, policy)
        n = len(history)
        mean = sum(x for _, x in history) / n
        spread = math.sqrt(sum((x - mean) ** 2 for _, x in history) / (n - 1)) if n > 1 else 0.0
        # Never above the highest sample: a step's own jump is spread, not more load.
        level = min(mean + spread, max(x for _, x in history))
        slope = ahead = horizon = None
        falling = fitted = False
        if line is not None and line.significant and line.slope > 0:
            slope = line.slope
            if obs.startup_seconds:
                horizon = min(obs.startup_seconds, policy.max_lookahead)
                ahead = line.now + slope * horizon
        elif line is not None and line.slope < 0 and (
            (line.significant and -line.slope * policy.trend_window >= policy.sized_target)
            or (state.falling and line.z <= -FALL_HOLD_Z)
        ):
            # A fall: significant, and freeing a replica's worth or more within the trend
            # window (a trough's noise can pass the trend test, but not by a replica, and a
            # spare let go there would be loading when the next rise comes). Once seen, it
            # lasts while its slope stays FALL_HOLD_Z standard errors below 0: a sample that
            # blurs it for a moment must not bring back the lagging mean and the spare.
            # A falling load's mean is half a window behind it: size for where the line is
            # now, with the noise around it (and no less than the latest sample), so
            # replicas go as the load does.
            slope, falling = line.slope, True
            along = max(0.0, line.now + line.residual, total)
            if along < level:
                level, fitted = along, True
        return _Reading(total, True, level=level, samples=n, mean=mean, spread=spread, floor=floor, ahead=ahead,
                        slope=slope or 0.0, falling=falling, fitted=fitted, horizon=horizon or 0.0,
                        history=history, full_batch=full_batch)
    # A stale total is not averaged: it may only raise the count (2.), never lower it.
    return _Reading(total, False, why, level=total, floor=floor, history=history, full_batch=full_batch)


@dataclass(frozen=True)
class _Spare:
    """The spare replicas this decision holds, of the ``asked`` (spareReplicas)."""

    asked: int
    held: int
    released: bool = False  # let go for a fall (held is 0)
    missing: bool = False  # let go for a fall and not back yet: every replica there serves

    @property
    def capped(self) -> bool:
        """maxReplicas left room for fewer than asked (a fall aside)."""
        return self.held < self.asked and not self.released


def _spare(policy: ScalingPolicy, reading: _Reading, state: ScalerState, current: int) -> _Spare:
    """``policy.spare`` as this decision holds it.

    maxReplicas bounds the spare, not the replicas that serve: near it, the replicas the
    level needs serve and only what is left over is spare (the spare ones serve too; a
    count at maxReplicas read as mostly spare would look like a panic all through a peak).
    The spare goes with a fall once the load is under the band of the replicas it leaves
    serving (a fall seen in a plateau's noise, with the load still on them, keeps it),
    and stays away until the fall ends: it is not asked for back and forth on the way down.
    Until the count grows again after such a fall (or holds the level and the spare once
    the fall is over), the spare is missing: every replica there serves, and a sample is
    a panic only at twice what they all hold."""
    asked = held = policy.spare
    if held and reading.level is not None:
        held = min(held, max(0, policy.max_replicas - _raw_replicas(reading.level, policy.sized_target)))
    capped = replace(policy, spare=held)
    released = bool(held) and reading.falling and (
        state.spare_released
        or (reading.level is not None and _ratio(reading.level, capped, current) < 1 - policy.tolerance))
    missing = bool(held) and (released or state.spare_missing)
    return _Spare(asked, 0 if released else held, released, missing)


def _learn(policy: ScalingPolicy, obs: Observation, reading: _Reading, memory: SloMemory | None) -> SloMemory | None:
    """SLO mode: the requests in flight per replica to size for, learned from fresh
    samples: the most in flight per replica seen while the objective held and (almost)
    nothing waited, less the tolerance band (so the band itself never lets the load
    past what was seen to hold), starting from the configured target. Not while requests
    wait: the TTFT of a waiting request is counted only once its first token comes, so
    a growing queue looks in time until it is too late. And never above
    what met the objective when it was missed with (almost) nothing waiting two samples
    in a row, even below the configured target: then prefill, not queueing, is too slow. (The
    engine's TTFT histogram counts a queued request when its first token comes, so one
    sample after a queue drains still carries the queue.) Averages over the replicas
    hide which one waits, so a batch size is not inferred from them."""
    if policy.slo_ttft is None:
        return None
    m = memory or SloMemory(policy.target, "the configured target (nothing learned yet)")
    load = obs.load
    if load is None or not reading.fresh:
        return m
    capacity, why, ceiling = m.capacity, m.why, m.ceiling
    ttft = load.ttft_p95_seconds
    in_flight = load.running_requests + load.queue_depth
    queued = load.queue_depth >= 0.5
    if ttft is not None and ttft <= policy.slo_ttft and not queued and in_flight * (1 - policy.tolerance) > capacity:
        capacity = in_flight * (1 - policy.tolerance)
        why = f"{in_flight:.3g} in flight per replica met it, less the {policy.tolerance:.0%} band"
    elif ttft is not None and ttft > policy.slo_ttft and not queued and not m.queued and load.running_requests > 0:
        bound = max(1.0, in_flight * policy.slo_ttft / ttft)
        if ceiling is None or bound < ceiling:
            ceiling = bound
    if ceiling is not None and capacity > ceiling:
        capacity = ceiling
        why = f"at most {ceiling:.3g} in flight per replica: the objective was missed with none waiting"
    return SloMemory(capacity, why, ceiling, queued)


@dataclass(frozen=True)
class _Line:
    """A least-squares line through the totals of the trend window."""

    slope: float  # per second
    now: float  # its value at the latest sample
    residual: float  # the standard deviation of the samples around it
    z: float  # the slope in standard errors
    significant: bool  # a rise or fall, not noise (see _trend)


def _trend(history: tuple[tuple[float, float], ...], policy: ScalingPolicy) -> _Line | None:
    """The least-squares line through the history, once it spans half the trend window.
    It is ``significant`` when its slope is at least ``trend_significance`` standard
    errors away from 0 and the change across the window is wider than the tolerance band
    of the current level (a drift the band would hide is noise, however regular). Its
    value now, not the last sample, is what is projected: one noisy sample moves it little."""
    if len(history) < 4 or history[-1][0] - history[0][0] < policy.trend_window / 2:
        return None
    n = len(history)
    tm = sum(t for t, _ in history) / n
    xm = sum(x for _, x in history) / n
    sxx = sum((t - tm) ** 2 for t, _ in history)
    if sxx <= 0:
        return None
    slope = sum((t - tm) * (x - xm) for t, x in history) / sxx
    variance = sum((x - xm - slope * (t - tm)) ** 2 for t, x in history) / (n - 2)
    error = math.sqrt(variance / sxx)
    z = slope / error if error > 0 else math.copysign(math.inf, slope) if slope else 0.0
    wide = abs(slope) * (history[-1][0] - history[0][0]) >= policy.tolerance * max(history[-1][1], policy.sized_target)
    significant = slope != 0 and wide and abs(z) >= policy.trend_significance
    return _Line(slope, xm + slope * (history[-1][0] - tm), math.sqrt(variance), z, significant)


def _raw_replicas(total: float, target: float) -> int:
    # The epsilon keeps a total that is an exact multiple of the target (up to float
    # noise from averaging) from asking for one replica too many.
    return max(0, math.ceil(total / target - 1e-9))


def _needed(total: float, policy: ScalingPolicy) -> int:
    """Replicas for ``total`` at the sizing target, and the spare ones."""
    return _raw_replicas(total, policy.sized_target) + policy.spare


def _ratio(total: float, policy: ScalingPolicy, replicas: int) -> float:
    """The load over what ``replicas`` (the spare ones aside) hold at the sizing target."""
    serving = replicas - policy.spare
    return total / (policy.sized_target * serving) if serving > 0 else math.inf


def _loading(obs: Observation, state: ScalerState) -> float | None:
    """Seconds since the last change of the count, while the replicas it asked for may still
    be loading (within one measured startup time of it, some replica still starting); None
    otherwise. No scale-down then: a replica removed while it loads throws its load away,
    and the load that asked for it a moment ago is seldom gone (a dip in a ramp is noise)."""
    if not obs.starting_replicas or not obs.startup_seconds or state.last_scale_time is None:
        return None
    since = obs.now - state.last_scale_time
    return since if since < obs.startup_seconds else None


def _clamp(n: int, policy: ScalingPolicy) -> int:
    return min(max(n, policy.min_replicas), policy.max_replicas)


def _busy(load: ModelLoad | None) -> bool:
    return load is not None and (load.queue_depth > 0 or load.running_requests > 0)


def _activity(obs: Observation, active_at: float) -> float:
    """The latest evidence of a request: the load's last activity, a busy sample, a wake."""
    load = obs.load
    if load is not None:
        if load.last_activity is not None:
            active_at = max(active_at, load.last_activity)
        if _busy(load) or load.requests_per_second > 0:
            active_at = max(active_at, load.time)
    if obs.wake:
        active_at = max(active_at, obs.now)
    return active_at


def _from_zero(
    policy: ScalingPolicy, obs: Observation, state: ScalerState, since: float, active_at: float
) -> Decision[ScalerState]:
    now = obs.now
    awake = max(1, policy.min_replicas)
    if obs.wake or _busy(obs.load):
        why = "a request is waiting at the activator" if obs.wake else "requests seen at 0 replicas"
        new = ScalerState(
            since=now,
            recommendations=((now, awake),),
            replicas_seen=((now, 0),),
            last_scale_time=now,
            active_at=now,
            slo=state.slo,
        )
        return Decision(0, awake, why, None, None, awake, new)
    if policy.scale_to_zero:
        new = replace(state, since=since, recommendations=(), replicas_seen=(), active_at=active_at)
        return Decision(0, 0, "scaled to zero while idle; the next request wakes it", None, None, 0, new)
    new = ScalerState(since=since, recommendations=((now, awake),), last_scale_time=now, active_at=active_at,
                      slo=state.slo)
    why = f"below minReplicas {policy.min_replicas} (scaleToZero is off)"
    limited = f"wants 0 replicas; minReplicas is {policy.min_replicas}"
    return Decision(0, awake, why, limited, TOO_FEW_REPLICAS, awake, new)


def _num(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 1 else f"{x:.1f}"


def _reason(
    policy: ScalingPolicy,
    obs: Observation,
    reading: _Reading,
    rec: int,
    up_rec: int,
    down_rec: int,
    window_covered: bool,
    desired: int,
    panic: bool = False,
    denied: bool = False,
    panic_until: float | None = None,
    loading: float | None = None,
    spare_missing: bool = False,
) -> str:
    current = obs.replicas
    if current > policy.max_replicas and desired == policy.max_replicas:
        return f"above maxReplicas {policy.max_replicas}"
    if current < policy.min_replicas and desired == policy.min_replicas:
        return f"below minReplicas {policy.min_replicas}"
    if reading.total is None:
        return f"holding at {current}: {reading.why}"

    total, target, metric = reading.total, policy.sized_target, policy.metric
    level = total if reading.level is None else reading.level
    raw = _needed(level, policy)
    ratio = _ratio(level, policy, current)
    on = f"target {target:.3g}×{max(0, current - policy.spare)}"
    if policy.headroom:
        on += f" ({policy.target:g} less {policy.headroom:.0%} headroom for the next rise)"
    if policy.spare:
        on += f" + {policy.spare} spare"
    shown = _num(level)
    if reading.fitted:
        shown += (f" (falling {_num(-reading.slope)}/s: the line fitted to {reading.samples} samples + 1 s.d. "
                  f"around it, or the latest sample if higher; {_num(total)} now)")
    elif reading.samples > 1:
        capped = ", their highest" if level < reading.mean + reading.spread - 1e-9 else ""
        shown += (f" (mean {_num(reading.mean)} + 1 s.d. {_num(reading.spread)} of {reading.samples} samples"
                  f"{capped}; {_num(total)} now)")
    if panic:
        held = (f"target {target:.3g}×{current} (all serving: the {policy.spare} spare not back since the fall)"
                if spare_missing and policy.spare else on)
        desc = (f"{metric} {_num(total)} over {held}, {policy.panic_threshold:g}× or more: panic, sized for at once "
                f"(no scale-down for {policy.trend_window:g} s)")
    elif current <= policy.spare:
        # Not even the spare is there yet (a start, a bound raised): none of the replicas serve.
        desc = (f"{metric} {shown} needs {raw} replicas: {raw - policy.spare} at target {target:.3g}"
                f" and {policy.spare} spare ({current} there)")
    elif abs(ratio - 1) <= policy.tolerance:
        desc = f"{metric} {shown} within {policy.tolerance:.0%} of {on}"
    else:
        desc = f"{metric} {shown} {'over' if ratio > 1 else 'under'} {on}"
    stale = "" if reading.fresh else f" (load signal stale: {reading.why})"
    if reading.ahead is not None and _needed(reading.ahead, policy) > raw and rec > raw:
        desc += (f", rising {_num(reading.slope)}/s: {_num(reading.ahead)} expected in {reading.horizon:.0f} s "
                 f"(replica startup)")

    if desired > current:
        return desc + stale
    if desired < current:
        return f"{desc}, no more than {desired} needed for {policy.scale_down_window:g} s"
    # Holding.
    if not reading.fresh and raw < current:
        return f"{desc}; not scaling down on a stale signal ({reading.why})"
    if rec > current and up_rec <= current:
        return f"{desc}; scale-up waits for the {policy.scale_up_window:g} s stabilization window"
    if rec < current and loading is not None and down_rec < current:
        return (f"{desc}: {rec} would do, but the replicas asked for {loading:.0f} s ago still load: "
                f"no scale-down before they are ready")
    if obs.starting_replicas > 0 and obs.ready_replicas < raw <= current:
        return (
            f"{metric} {_num(total)} needs {raw} replicas: "
            f"{obs.ready_replicas} ready, {obs.starting_replicas} starting"
        )
    if reading.floor is not None and raw < current and reading.floor >= current:
        return f"{desc}, but the running requests fill {reading.floor} replicas{stale}"
    if rec < current and reading.slope > 0:
        return (f"{desc}: {rec} would do, but the load is rising {_num(reading.slope)}/s: "
                f"no scale-down while it does")
    if rec < current and panic_until is not None:
        return f"{desc}: {rec} would do; no scale-down until {panic_until - obs.now:.0f} s after the last panic"
    if denied:
        if reading.fresh and reading.samples < MIN_LEVEL_SAMPLES:
            return f"{desc}; holding until {MIN_LEVEL_SAMPLES} samples say so (or one says panic)"
        return f"{desc}, but the latest sample is not: holding"
    if rec < current and (down_rec >= current or not window_covered):
        return f"{desc}: {rec} would do; scale-down waits for the {policy.scale_down_window:g} s stabilization window"
    return desc + stale

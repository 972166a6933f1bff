"""What a node's own configuration pins about its privacy, whatever a round's settings from the server say.

The server is not trusted to set the noise that protects a user against it. A node reads, from the run
configuration it was started with (`privacy`), and never from a round's settings:

- the noise multiplier z: `privacy.noise_multiplier`, or when that is 0 the z calibrated exactly as the
  server's privacy plan does (server/rounds/privacy_plan.py: the target epsilon over the configured rounds,
  the popularity prior's count release, the trending releases and the start check, delta = privacy.delta or
  N^-1.1 for the node's population N). In local-DP mode a
  round asking for a smaller local z is refused and each device noises with z, never less; in central mode
  under secure aggregation the node checks the noise share it is asked to add (client/masked_update.py).
- the noise seed: a fixed seed sent by the server (noise_seed >= 0) would let it subtract the noise; it is
  refused unless the node itself is configured deterministic (`privacy.seed >= 0`, tests and
  reproductions), and the noise is otherwise drawn from OS entropy.
- whether the exact unclipped count leaves the node: only with adaptive clipping (which noises it at the
  server); otherwise the reply says 0.
- the start check (server/rounds/start_check.py): the node answers only when its own configuration runs the
  check (not in local mode, under secure aggregation or with `federated.train_on_valid`) and only for the
  z_s its configuration gives (`start_check.noise_multiplier`, 0 in mode "none"). The server adds that noise
  centrally, so the node cannot see it applied; the pin keeps the z_s the server announces (and records) the
  one the devices agreed to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.config import FedhomeConfig
from shared.errors import UpdateRejectedError
from shared.messages import RoundSettings
from shared.privacy.noise import GaussianNoise
from shared.privacy.planned_noise import planned_noise_multiplier, start_check_event

RTOL = 1e-9  # a z computed from the same configuration on both sides agrees to rounding


@dataclass(frozen=True)
class OwnPrivacy:
    """The node's own privacy terms (see the module docstring); `population` is the N the node knows."""

    config: FedhomeConfig
    population: int

    @property
    def deterministic(self) -> bool:
        return self.config.privacy.seed >= 0

    def noise_source(self, settings: RoundSettings) -> GaussianNoise:
        """The round's noise: OS entropy, or the server's fixed seed only when the node is deterministic."""
        if settings.noise_seed < 0:
            return GaussianNoise(seed=None)
        if not self.deterministic:
            raise UpdateRejectedError(
                "the server sent a fixed noise seed; this node draws its noise from OS entropy "
                "(a fixed seed only with the node's own privacy.seed >= 0)"
            )
        return GaussianNoise(seed=settings.noise_seed)

    @property
    def noise_multiplier(self) -> float:
        """The z of the training rounds (computed once per configuration)."""
        return planned_noise_multiplier(self.config, self.population)

    def local_noise_multiplier(self, settings: RoundSettings) -> float:
        """The z each device noises its clipped update with: in local-DP mode the node's own z, or a
        larger one the round asks for; a round asking for less is refused. Outside local mode, what the
        round asks (0 unless the server's mode is local: more noise never hurts privacy)."""
        asked = settings.local_noise_multiplier
        if not (math.isfinite(asked) and asked >= 0):
            raise UpdateRejectedError(f"local noise multiplier {asked} is not a number >= 0")
        if self.config.privacy.mode != "local":
            return asked
        own = self.noise_multiplier
        if asked < own * (1 - RTOL):
            raise UpdateRejectedError(
                f"the round asks for local noise multiplier {asked}, below this node's {own}"
            )
        return max(asked, own)

    def secure_noise_multiplier(self, *, trending: bool) -> float:
        """The z of the central noise a securely aggregated sum must carry (0 when none is due): the
        training rounds' z in central mode, the trending releases' z_t unless the mode is "none"."""
        mode = self.config.privacy.mode
        if mode == "none":
            return 0.0
        if trending:
            return float(self.config.trending.noise_multiplier)
        return self.noise_multiplier if mode == "central" else 0.0

    def check_start_check(self, asked: float) -> None:
        """UpdateRejectedError unless the node's own configuration runs the start check with noise
        multiplier `asked` (the server's z_s)."""
        if not self.config.runs_start_check:
            blocker = self.config.start_check_blocker or "start_check.enabled = 'off'"
            raise UpdateRejectedError(f"this node does not take part in a start check: {blocker}")
        own = start_check_event(self.config).noise_multiplier
        if not (math.isfinite(asked) and abs(asked - own) <= RTOL * max(own, 1.0)):
            raise UpdateRejectedError(
                f"the start check asks for noise multiplier {asked}; this node's is {own}"
            )

    def unclipped_count(self, unclipped: int) -> int:
        """What the reply says of the unclipped users: the count with adaptive clipping, else 0."""
        return unclipped if self.config.privacy.adaptive_clipping else 0

"""Parameters of the simulated platform, and the named presets.

Every knob of the world lives in :class:`SynthConfig` (frozen, so a preset cannot be
changed by accident; derive variants with :func:`dataclasses.replace`). Scales are in
"latent units": item latents and user tastes have norm about 1, so ``taste . latent`` has a
standard deviation of about ``1/sqrt(dim)`` before ``engagement_scale`` multiplies it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from lis.errors import ConfigError

# 2024-01-01T00:00:00Z: a fixed epoch so outputs never depend on the wall clock.
DEFAULT_START = 1_704_067_200


@dataclass(frozen=True)
class SynthConfig:
    """One simulated platform: catalogue size, traffic, and how preference is generated.

    Catalogue
        n_items, n_categories, dim: each category holds ``topics_per_category`` topics, which the
        catalogue does not record; an item's latent is ``category_weight * centre[category] +
        topic_weight * centre[topic] + rest * noise`` (all of norm ~1, rest so that the squares
        sum to 1): with the defaults the category explains 9% of the latent, the topic 36%.
        ``late_item_share`` of the items are created while the log runs
        (uniformly over 5%..95% of the span), so some items are first seen late (cold).
    Content
        image_size (square RGB PNG), vocab_size (pseudo-words, each with a direction in latent
        space), word_temperature (lower = words more specific to the latent). A share
        ``uninformative_share`` of the items gets content rendered from an unrelated random
        latent: it looks the same but carries no preference information.
    Users and sessions (a content feed)
        Each user has 1-3 interests, each drawn like an item latent around one topic (so items
        engaged for one interest share a topic that the catalogue's category does not reveal);
        the base taste is their weighted mix. A session dwells on one interest, drawn by the
        interest weights: its taste is ``(1 - session_focus) * base + session_focus * interest``
        (plus the drift). A share ``explore_share`` of sessions follows a passing topic outside
        the user's interests instead (trending, shared by a friend): the items engaged in it
        belong together, but user-level history says little about it. ``max_interests``
        bounds the interests per user. With the defaults a session shows ~13 items and 3-4 are
        engaged.
    Traffic
        n_users, n_sessions (spread over users by a log-normal activity), impressions_per_session
        (mean; 1 + Poisson), days. Each session retrieves ``pool_size`` candidates from a
        popularity-biased distribution (``exposure_bias``, plus ``fresh_boost`` for items
        younger than a week), a share ``topic_share`` of them from the category of the
        session's interest (the feed dwells on the session's topic), and the logging policy
        shows the top ones by a score that mixes popularity and a partial knowledge of the
        session's taste (``policy_relevance``; ``policy_knowledge`` = weight of the true taste
        in the policy's estimate, the rest a fixed per-user error).
    Engagement
        logit = engagement_scale * taste(t) . latent + popularity_effect * popularity
        + user bias (sd ``user_bias_sd``) + noise (sd ``logit_noise_sd``) + b0, where b0 is
        solved so that the expected positive rate equals ``positive_rate``. Tastes drift as a
        random walk whose total displacement over the whole span is ``taste_drift`` (norm).
    Output
        include_base_logit adds a ``base_logit`` column: the logging policy's own estimate
        of the engagement logit (a stand-in for a production ranker's score).
    """

    name: str = "custom"
    n_items: int = 2_000
    n_categories: int = 12
    dim: int = 16
    category_weight: float = 0.3
    topics_per_category: int = 4
    topic_weight: float = 0.6
    late_item_share: float = 0.2
    image_size: int = 64
    vocab_size: int = 1_000
    word_temperature: float = 0.15
    uninformative_share: float = 0.15
    n_users: int = 1_500
    n_sessions: int = 6_500
    impressions_per_session: float = 18.0
    days: int = 60
    pool_size: int = 50
    topic_share: float = 0.8
    max_interests: int = 3
    explore_share: float = 0.5
    session_focus: float = 0.8
    exposure_bias: float = 1.0
    fresh_boost: float = 1.5
    policy_relevance: float = 3.0
    policy_knowledge: float = 0.5
    engagement_scale: float = 8.0
    popularity_effect: float = 0.3
    user_bias_sd: float = 0.5
    logit_noise_sd: float = 0.5
    taste_drift: float = 0.3
    positive_rate: float = 0.25
    include_base_logit: bool = False
    start: int = DEFAULT_START

    def __post_init__(self):
        _check(self)

    def to_dict(self) -> dict:
        return asdict(self)


def _check(config: SynthConfig) -> None:
    """Reject values that would make an empty or degenerate world (ConfigError names the field)."""
    positive_ints = ("n_items", "n_categories", "topics_per_category", "max_interests", "dim", "image_size", "vocab_size", "n_users",
                     "n_sessions", "days", "pool_size")
    for field in positive_ints:
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"synth config: field '{field}' must be a positive integer; got {value!r}.")
    for field in ("late_item_share", "uninformative_share", "policy_knowledge", "topic_share", "session_focus", "category_weight", "topic_weight", "explore_share"):
        value = getattr(config, field)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"synth config: field '{field}' must lie in [0, 1]; got {value!r}.")
    if not 0.0 < config.positive_rate < 1.0:
        raise ConfigError(f"synth config: field 'positive_rate' must lie in (0, 1); got {config.positive_rate!r}.")
    if config.impressions_per_session < 1:
        raise ConfigError(
            f"synth config: field 'impressions_per_session' must be >= 1; got {config.impressions_per_session!r}."
        )
    if config.vocab_size < 40:
        raise ConfigError(f"synth config: field 'vocab_size' must be >= 40 (an item draws up to 20 "
                          f"distinct words); got {config.vocab_size}.")
    if config.image_size < 8:
        raise ConfigError(f"synth config: field 'image_size' must be >= 8; got {config.image_size}.")


PRESETS: dict[str, SynthConfig] = {
    # Session counts are set so that impressions land on the target after the feed drops
    # repeats (a user never sees an item twice), which removes more the smaller the catalogue.
    # Unit tests: 200 items, ~20k impressions, 32-px images. 500 sessions (6k impressions) left
    # every builder's LIS interval across 0 (co_engagement +0.0001 [-0.0394, +0.0471], seed 0);
    # with 2000 sessions co_engagement's defaults clear 0 on seeds 0-2 (lower bounds +0.013..+0.016).
    "tiny": SynthConfig(name="tiny", n_items=200, n_categories=6, image_size=32, vocab_size=300,
                        n_users=400, n_sessions=2000),
    # The product demo and the validity tests: 2k items, ~97k impressions, 64-px images.
    "demo": SynthConfig(name="demo"),
    # Benchmarks: 20k items, >= 1M impressions (1.16M for seed 1; seeds differ by well under 1%).
    "bench": SynthConfig(name="bench", n_items=20_000, n_categories=24, vocab_size=2_000,
                         n_users=12_000, n_sessions=70_000),
}


def resolve(preset_or_config) -> SynthConfig:
    """A preset name or a :class:`SynthConfig` -> the config (ConfigError for unknown names)."""
    if isinstance(preset_or_config, SynthConfig):
        return preset_or_config
    if isinstance(preset_or_config, str) and preset_or_config in PRESETS:
        return PRESETS[preset_or_config]
    raise ConfigError(
        f"synth: unknown preset {preset_or_config!r}; choose one of {', '.join(PRESETS)} or pass a SynthConfig."
    )

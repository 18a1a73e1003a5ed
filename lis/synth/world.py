"""The hidden world: item latents, user tastes that drift, a logging policy, engagement.

Everything here is numpy on index arrays; ids become strings only when the files are
written. Each component draws from its own child of the seed (see :func:`streams`), so
changing how one part is generated leaves the others' random numbers untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lis.synth.config import SynthConfig

DAY = 86_400

# Child streams of the seed, by purpose. Append new purposes at the end: the position is
# what seeds a stream, so reordering would change every existing world.
STREAMS = ("items", "users", "sessions", "policy", "engagement", "content", "render")


def streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children)}


@dataclass
class Items:
    latent: np.ndarray       # (n, dim) float64, the truth
    category: np.ndarray     # (n,) int
    centres: np.ndarray      # (n_categories, dim)
    topic_centres: np.ndarray  # (n_categories * topics_per_category, dim); topic t is in category t // topics_per_category
    popularity: np.ndarray   # (n,) standard normal: exposure and engagement both use it
    created_at: np.ndarray   # (n,) int64 unix seconds
    informative: np.ndarray  # (n,) bool: content rendered from the item's own latent
    content_latent: np.ndarray  # (n, dim): what the renderer sees (a random latent if uninformative)


@dataclass
class Log:
    """One row per impression, in non-decreasing time order."""

    user: np.ndarray       # int
    item: np.ndarray       # int
    timestamp: np.ndarray  # int64 unix seconds
    label: np.ndarray      # int8
    session: np.ndarray    # int: sessions numbered by start time
    base_logit: np.ndarray  # float32: the logging policy's own estimate of the logit
    taste_dot: np.ndarray  # float: true taste(t) . latent, for the summary's ceiling AUC
    session_taste: np.ndarray  # (n_sessions, dim): the user's taste during each session


def _gaussian(rng, n, dim):
    # Rows of norm ~1 whatever the dimension.
    return rng.standard_normal((n, dim)) / np.sqrt(dim)


def make_items(config: SynthConfig, rng: np.random.Generator) -> Items:
    """Latents clustered by category, a popularity term, creation times, content latents."""
    n, dim = config.n_items, config.dim
    centres = _gaussian(rng, config.n_categories, dim)
    category = rng.integers(0, config.n_categories, n)
    # Topics: finer than the catalogue's categories (which the catalogue does not record).
    topic_centres = _gaussian(rng, config.n_categories * config.topics_per_category, dim)
    topic = category * config.topics_per_category + rng.integers(0, config.topics_per_category, n)
    latent = _mix(config, centres[category], topic_centres[topic], _gaussian(rng, n, dim))
    popularity = rng.standard_normal(n)
    span = config.days * DAY
    # Most items exist before the log starts; a late share is created while it runs.
    created_at = config.start - rng.integers(DAY, 365 * DAY, n)
    late = rng.random(n) < config.late_item_share
    created_at[late] = config.start + (rng.uniform(0.05, 0.95, late.sum()) * span).astype(np.int64)
    informative = rng.random(n) >= config.uninformative_share
    # Uninformative items are rendered from a fresh latent of the same distribution, so
    # their content looks like everyone else's but says nothing about their preference.
    decoy_topic = rng.integers(0, len(topic_centres), n)
    decoy = _mix(config, centres[decoy_topic // config.topics_per_category], topic_centres[decoy_topic],
                 _gaussian(rng, n, dim))
    content_latent = np.where(informative[:, None], latent, decoy)
    return Items(latent, category, centres, topic_centres, popularity, created_at.astype(np.int64), informative,
                 content_latent)


def _mix(config: SynthConfig, category_centre, topic_centre, noise):
    """``category_weight * category + topic_weight * topic + rest * noise``: rows of norm ~1."""
    a, b = config.category_weight, config.topic_weight
    return a * category_centre + b * topic_centre + np.sqrt(max(1 - a ** 2 - b ** 2, 0.0)) * noise


@dataclass
class Users:
    taste: np.ndarray        # (n, dim) base taste: the interests' weighted mix, unit norm
    interests: np.ndarray    # (n, k, dim) interest points
    weights: np.ndarray      # (n, k) how often each interest leads a session (0 = not an interest)
    favourites: np.ndarray   # (n, k) category of each interest
    bias: np.ndarray         # (n,) engagement bias
    activity: np.ndarray     # (n,) relative number of sessions
    policy_knowledge: float  # correlation of the policy's estimate with the session's taste
    policy_noise: np.ndarray  # (n, dim) the policy's fixed error about each user

    def guess(self, session_user: np.ndarray, session_taste: np.ndarray) -> np.ndarray:
        """The policy's estimate of each session's taste: it follows the session (a feed sees the
        session's clicks) but with the user's fixed error, so it stays partial."""
        rho = self.policy_knowledge
        return rho * session_taste + np.sqrt(1 - rho ** 2) * self.policy_noise[session_user]


def make_users(config: SynthConfig, items: Items, rng: np.random.Generator) -> Users:
    """1-3 interests per user (each a point near one topic, drawn like an item's latent), their
    weights, a base taste (the weighted mix), a bias, an activity level, and the policy's error."""
    n, dim = config.n_users, config.dim
    k = config.max_interests
    topics = rng.integers(0, len(items.topic_centres), (n, k))
    favourites = topics // config.topics_per_category
    keep = np.r_[1.0, np.linspace(0.5, 0.3, k - 1)] if k > 1 else np.ones(1)
    weights = rng.dirichlet(np.ones(k), n) * (rng.random((n, k)) < keep)
    weights /= weights.sum(axis=1, keepdims=True)
    # An interest is the user's own point near a topic: co-engaged items share their topic, which
    # the catalogue's category does not reveal.
    interests = _mix(config, items.centres[favourites], items.topic_centres[topics],
                     _gaussian(rng, n * k, dim).reshape(n, k, dim))
    interests /= np.linalg.norm(interests, axis=2, keepdims=True)
    taste = np.einsum("uk,ukd->ud", weights, interests)
    taste /= np.linalg.norm(taste, axis=1, keepdims=True)
    bias = rng.normal(0.0, config.user_bias_sd, n)
    activity = rng.lognormal(0.0, 0.8, n)
    rho = config.policy_knowledge
    noise = _gaussian(rng, n, dim)
    return Users(taste, interests, weights, favourites, bias, activity, rho, noise)


def make_sessions(config: SynthConfig, users_info: "Users", items: Items, rng: np.random.Generator):
    """Session owners, start times (sorted), sizes, the interest each session dwells on (its
    category) and the taste at each session.

    A session dwells on one of its user's interests (drawn by the interest weights): its taste
    is ``(1 - session_focus) * base taste + session_focus * interest``, plus a Brownian drift
    from the user's first session that moves about ``taste_drift`` over the whole span, so the
    past predicts the future, but less and less.
    """
    span = config.days * DAY
    activity = users_info.activity
    users = rng.choice(config.n_users, size=config.n_sessions, p=activity / activity.sum())
    # Leave an hour at the end so a session's impressions stay inside the span.
    start = rng.integers(0, span - 3600, config.n_sessions)
    order = np.lexsort((start, users))  # by user, then time: the walk runs per user
    users, start = users[order], start[order]
    first = np.r_[True, users[1:] != users[:-1]]
    elapsed = np.where(first, start, np.diff(start, prepend=0)).astype(np.float64)
    steps = _gaussian(rng, config.n_sessions, config.dim) * (config.taste_drift * np.sqrt(elapsed / span))[:, None]
    walk = np.cumsum(steps, axis=0)
    # Restart the cumulative sum at each user's first session.
    group_start = np.maximum.accumulate(np.where(first, np.arange(config.n_sessions), 0))
    walk -= (walk - steps)[group_start]
    # The interest of each session, by inverse CDF over the user's interest weights.
    cdf = np.cumsum(users_info.weights[users], axis=1)
    pick = np.minimum((rng.random(config.n_sessions)[:, None] > cdf).sum(axis=1), cdf.shape[1] - 1)
    interest = users_info.interests[users, pick]
    topic = users_info.favourites[users, pick]
    # Exploring sessions follow a passing topic, outside the user's interests (something
    # trending, a link from a friend): user-level models learn little from them, but the items
    # engaged in them still belong together.
    explore = rng.random(config.n_sessions) < config.explore_share
    passing = rng.integers(0, len(items.topic_centres), int(explore.sum()))
    category = passing // config.topics_per_category
    interest[explore] = _mix(config, items.centres[category], items.topic_centres[passing],
                             _gaussian(rng, len(passing), config.dim))
    topic[explore] = category
    focus = config.session_focus
    taste = (1 - focus) * users_info.taste[users] + focus * interest + walk
    sizes = 1 + rng.poisson(config.impressions_per_session - 1, config.n_sessions)
    sizes = np.minimum(sizes, config.pool_size)
    # Number sessions by start time (ties by owner), which is how session ids are assigned.
    by_time = np.lexsort((users, start))
    return (users[by_time], config.start + start[by_time], sizes[by_time], taste[by_time], topic[by_time])


def exposure(config: SynthConfig, items: Items, session_start: np.ndarray, sizes: np.ndarray,
             topic: np.ndarray, guess: np.ndarray, rng: np.random.Generator, progress=None):
    """The logging policy: retrieve a popularity-biased pool that dwells on the session's topic,
    show the top of a noisy ranking.

    Retrieval draws ``pool_size`` candidates per session with probability proportional to
    exp(exposure_bias * popularity + fresh_boost * [younger than 7 days]) among items created
    before that day (exposure bias: popular items are shown more); a share ``topic_share`` of
    the draws is restricted to the category of the session's interest (a feed dwells on what
    the session is about). Ranking scores policy_relevance * guess . latent + popularity +
    Gumbel noise, where ``guess`` is the policy's estimate of the session's taste (one row per
    session). Returns (session index, position, item) per impression.
    """
    n_sessions, m = len(session_start), config.pool_size
    n_topic = int(round(config.topic_share * m))
    day = (session_start - config.start) // DAY
    pools = np.empty((n_sessions, m), dtype=np.int64)
    by_category = [np.flatnonzero(items.category == c) for c in range(config.n_categories)]
    for d in np.unique(day):
        rows = np.flatnonzero(day == d)
        day_start = config.start + int(d) * DAY
        age = (day_start - items.created_at) / DAY
        weight = np.exp(config.exposure_bias * items.popularity + config.fresh_boost * ((age >= 0) & (age < 7)))
        weight[age < 0] = 0.0  # not created yet (items created during the day wait a day)
        cdf = np.cumsum(weight)
        draws = rng.random((len(rows), m))
        pools[rows, n_topic:] = np.minimum(np.searchsorted(cdf, draws[:, n_topic:] * cdf[-1], side="right"),
                                           len(cdf) - 1)
        if n_topic:
            for c in np.unique(topic[rows]):
                members = by_category[c]
                sub = rows[topic[rows] == c]
                local = np.cumsum(weight[members])
                if len(members) == 0 or local[-1] <= 0:   # an empty topic: draw globally instead
                    pick = np.searchsorted(cdf, draws[topic[rows] == c, :n_topic] * cdf[-1], side="right")
                    pools[sub, :n_topic] = np.minimum(pick, len(cdf) - 1)
                    continue
                pick = np.searchsorted(local, draws[topic[rows] == c, :n_topic] * local[-1], side="right")
                pools[sub, :n_topic] = members[np.minimum(pick, len(members) - 1)]
        if progress is not None:
            progress.update(len(rows))
    pools.sort(axis=1)
    duplicate = np.zeros(pools.shape, dtype=bool)
    duplicate[:, 1:] = pools[:, 1:] == pools[:, :-1]
    score = np.empty(pools.shape)
    chunk = 20_000  # bounds the (chunk, m, dim) gather to ~128 MB
    for lo in range(0, n_sessions, chunk):
        hi = min(lo + chunk, n_sessions)
        relevance = np.einsum("sd,smd->sm", guess[lo:hi], items.latent[pools[lo:hi]])
        score[lo:hi] = config.policy_relevance * relevance + items.popularity[pools[lo:hi]]
    score += rng.gumbel(size=score.shape)
    score[duplicate] = -np.inf
    ranked = np.argsort(-score, axis=1, kind="stable")
    shown = np.arange(m)[None, :] < sizes[:, None]
    shown &= np.isfinite(np.take_along_axis(score, ranked, axis=1))
    session_idx, position = np.nonzero(shown)
    item = pools[session_idx, ranked[session_idx, position]]
    return session_idx, position, item


def _first_occurrence(key, *time_order) -> np.ndarray:
    """Sorted row indices of the first row (in ``time_order``, lexicographic) of each key."""
    order = np.lexsort(tuple(reversed(time_order)))
    _, first = np.unique(key[order], return_index=True)
    return np.sort(order[first])


def solve_intercept(logits: np.ndarray, target: float) -> float:
    """b0 such that mean(sigmoid(logits + b0)) == target (bisection; deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        rate = np.mean(1.0 / (1.0 + np.exp(-(logits + mid))))
        lo, hi = (mid, hi) if rate < target else (lo, mid)
    return (lo + hi) / 2


def simulate_log(config: SynthConfig, items: Items, rngs: dict, progress=None) -> Log:
    """Users, sessions, exposure and engagement -> the impression log in time order."""
    users_info = make_users(config, items, rngs["users"])
    users, start, sizes, taste, topic = make_sessions(config, users_info, items, rngs["sessions"])
    guess = users_info.guess(users, taste)
    session, position, item = exposure(config, items, start, sizes, topic, guess, rngs["policy"], progress)
    rng = rngs["engagement"]
    # Impressions within a session are a few seconds apart, in the policy's ranking order.
    gaps = 1 + rng.exponential(14.0, len(session)).astype(np.int64)
    gaps[position == 0] = 0
    run = np.cumsum(gaps)
    first_row = np.r_[0, np.flatnonzero(np.diff(session)) + 1]
    run -= np.repeat(run[first_row], np.diff(np.r_[first_row, len(session)]))
    timestamp = start[session] + run
    user = users[session]
    # The feed never shows a user an item twice: keep each (user, item)'s first impression.
    # Without this, random vectors would "predict" engagement by recognising a re-shown
    # item that the user engaged before (cosine 1 with itself), which no content model should.
    first = _first_occurrence(user * np.int64(config.n_items) + item, timestamp, session, position)
    session, position, item, timestamp, user = (a[first] for a in (session, position, item, timestamp, user))
    taste_dot = np.einsum("nd,nd->n", taste[session], items.latent[item])
    logit = (config.engagement_scale * taste_dot + config.popularity_effect * items.popularity[item]
             + users_info.bias[user] + rng.normal(0.0, config.logit_noise_sd, len(item)))
    logit += solve_intercept(logit, config.positive_rate)
    label = (rng.random(len(item)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    # The policy's own logit estimate: its partial taste guess, popularity, no user bias.
    policy_dot = np.einsum("nd,nd->n", guess[session], items.latent[item])
    base = (config.engagement_scale * config.policy_knowledge * policy_dot
            + config.popularity_effect * items.popularity[item])
    base += solve_intercept(base, config.positive_rate)
    order = np.lexsort((position, session, timestamp))
    return Log(user[order], item[order], timestamp[order].astype(np.int64), label[order], session[order],
               base[order].astype(np.float32), taste_dot[order], taste.astype(np.float32))

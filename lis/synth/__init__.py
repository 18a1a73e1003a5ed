"""The simulated platform: a small but honest world whose truth is known.

``simulate(preset, seed, out_dir)`` writes a data dir (catalogue, log, images) together with
the hidden truth (item latents, per-session user tastes). It is a content feed: items have
latent preference vectors clustered by category and, finer, by topic; their images and texts
are rendered from the latent (except an uninformative share); users have 1-3 interests and
drifting tastes, and each session dwells on one interest: the feed draws most candidates from
that interest's category, a popularity-biased logging policy that partly knows the session's
taste ranks them, and a user engages several items per session (engagement is a logistic
function of taste . latent, popularity, user bias and noise). See :class:`SynthConfig` for
every knob and ``PRESETS`` for the named sizes (tiny, demo, bench).

Not modelled: position bias, item-item substitution within a session, seasonality, or
feedback of past engagement into the policy (its popularity term is static).
"""
from lis.synth.config import PRESETS, SynthConfig, resolve

__all__ = ["PRESETS", "SynthConfig", "resolve", "simulate", "summarize"]


def __getattr__(name):
    # simulate/summarize pull in numpy and pyarrow; importing them lazily keeps the CLI's
    # parser (which only needs the preset names) instant.
    if name in ("simulate", "summarize"):
        from lis.synth import output

        return getattr(output, name)
    raise AttributeError(f"module 'lis.synth' has no attribute {name!r}")

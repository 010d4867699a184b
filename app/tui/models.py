"""Loading each role's model (or probing its server) for the status bar, off the UI thread."""

from __future__ import annotations

from app.errors import DuetError


def prepare_backend(rc, progress=None) -> tuple[str, str]:
    """Load a role's model (or probe its server): ("ready"|"failed", reason). Runs in a thread;
    ``progress(fraction)`` hears how far a local engine's load is."""
    try:
        if rc.backend == "openai":
            from app.backends.probe import probe

            result = probe(rc, timeout=3.0, check_reasoning=False)
            if not result.reachable or not result.model_ok:
                return "failed", result.message or "unreachable"
            return "ready", ""
        from app.backends import make_backend

        backend = make_backend(rc)
        model = getattr(backend, "model", None)
        if rc.backend == "local":
            model.load(progress)
        elif model is not None and hasattr(model, "load"):
            model.load()
        return "ready", ""
    except DuetError as exc:
        return "failed", str(exc)
    except Exception as exc:  # a broken install must show in the status bar, not crash the UI
        return "failed", f"{type(exc).__name__}: {exc}"

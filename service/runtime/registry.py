"""The model registry: every valid model under the models directory, hot-reloadable.

Layout: ``<dir>/<name>/<version>/{model.onnx, manifest.json}``. Each folder is validated
with ``load_manifest`` (schema version, SHA-256) and opened as a runtime. ``reload()``
re-scans: folders whose files changed are loaded again and swapped in atomically; a
replacement that fails validation keeps the previous model serving and records the
error (``errors``), so a half-copied or corrupt upload never takes a model down.
Names are checked against the manifest's safe-name pattern and folders must resolve
inside the models directory: no path traversal through names. The ONNX file is read
once, hashed, and the runtime built from those bytes (``read_model``). ``errors`` (shown
by the API) name files relative to the models directory; the log has the full paths.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.errors import ModelError
from service.metrics import Metrics
from service.runtime.manifest import SAFE_NAME, Manifest, load_manifest, read_model
from service.runtime.session import ModelRuntime, OrtRuntime

log = logging.getLogger(__name__)
_SAFE = re.compile(SAFE_NAME)

RuntimeFactory = Callable[[Path, Manifest], ModelRuntime]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    version: str
    folder: Path
    manifest: Manifest
    runtime: ModelRuntime
    fingerprint: tuple[tuple[int, int], ...]  # (mtime_ns, size) of manifest and onnx

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort: "10" after "9", "1.10" after "1.9"."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._-]", version))


def _fingerprint(folder: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for name in ("manifest.json", "model.onnx"):
        try:
            st = (folder / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, -1))
    return tuple(out)


class ModelRegistry:
    """Models by name and version; thread-safe; ``reload()`` is the only mutator."""

    def __init__(
        self,
        directory: Path,
        threads: int = 1,
        metrics: Metrics | None = None,
        factory: RuntimeFactory | None = None,
    ) -> None:
        self.dir = Path(directory)
        self._metrics = metrics
        self._factory = factory  # None: onnxruntime, built from the bytes that were hashed
        self._threads = threads
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # the REST route and the file watcher may reload at once
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self.errors: dict[str, str] = {}
        self.generation = 0  # bumped whenever the set of served models changes
        self._last_scan: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {}
        self.reload()

    # ------------------------------------------------------------ queries

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        with self._lock:
            return sorted(self._models.get(name, {}), key=_version_key)

    def all(self) -> list[LoadedModel]:
        with self._lock:
            return [m for name in sorted(self._models) for _, m in sorted(self._models[name].items())]

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The model ``name`` at ``version`` (newest when None); ModelError when unknown."""
        if not _SAFE.match(name) or (version is not None and not _SAFE.match(version)):
            raise ModelError(f"invalid model name or version {name!r}/{version!r} (expected {SAFE_NAME})")
        with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise ModelError(f"unknown model {name!r} (have {sorted(self._models)})")
            if version is None:
                version = max(versions, key=_version_key)
            found = versions.get(version)
            if found is None:
                raise ModelError(f"model {name!r} has no version {version!r} (have {sorted(versions)})")
            return found

    # ------------------------------------------------------------ loading

    def _folders(self) -> list[tuple[str, str, Path]]:
        root = self.dir.resolve()
        found: list[tuple[str, str, Path]] = []
        if not root.is_dir():
            return found
        for name_dir in sorted(root.iterdir()):
            if not name_dir.is_dir() or not _SAFE.match(name_dir.name):
                continue
            for ver_dir in sorted(name_dir.iterdir()):
                if not ver_dir.is_dir() or not _SAFE.match(ver_dir.name):
                    continue
                # Symlinks pointing outside the models directory are refused.
                if root not in ver_dir.resolve().parents:
                    log.error("model folder %s resolves outside the models directory: ignored", ver_dir)
                    continue
                found.append((name_dir.name, ver_dir.name, ver_dir))
        return found

    def changed(self) -> bool:
        """Cheap check (stat only): would ``reload()`` see different files?"""
        scan = {(n, v): _fingerprint(p) for n, v, p in self._folders()}
        with self._lock:
            return scan != self._last_scan

    def reload(self) -> dict[str, list[str] | dict[str, str]]:
        """Re-scan the directory; returns what was loaded, kept, removed, and errors."""
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> dict[str, list[str] | dict[str, str]]:
        loaded: list[str] = []
        unchanged: list[str] = []
        errors: dict[str, str] = {}
        new: dict[str, dict[str, LoadedModel]] = {}
        scan: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {}
        with self._lock:
            current = {n: dict(vs) for n, vs in self._models.items()}
        for name, version, folder in self._folders():
            fp = scan[(name, version)] = _fingerprint(folder)
            old = current.get(name, {}).get(version)
            if old is not None and old.fingerprint == fp:
                new.setdefault(name, {})[version] = old
                unchanged.append(old.key)
                continue
            try:
                manifest, runtime = self._open(name, version, folder)
            except ModelError as e:
                errors[f"{name}/{version}"] = self._public(str(e))
                if self._metrics is not None:
                    self._metrics.model_errors.inc()
                log.error("model %s/%s refused: %s", name, version, e)
                if old is not None:  # keep serving the last good one
                    new.setdefault(name, {})[version] = old
                continue
            new.setdefault(name, {})[version] = LoadedModel(name, version, folder, manifest, runtime, fp)
            loaded.append(f"{name}/{version}")
            log.info("model %s/%s loaded (%s, sha256 %s…)", name, version, manifest.kind, manifest.sha256[:12])
        removed = [f"{n}/{v}" for n, vs in current.items() for v in vs if v not in new.get(n, {})]
        with self._lock:
            self._models = new
            self._last_scan = scan
            self.errors = errors
            if loaded or removed:
                self.generation += 1
        return {"loaded": loaded, "unchanged": unchanged, "removed": removed, "errors": errors}

    def _open(self, name: str, version: str, folder: Path) -> tuple[Manifest, ModelRuntime]:
        if self._factory is None:
            manifest, blob = read_model(folder)
        else:
            manifest, blob = load_manifest(folder), b""
        if manifest.name != name or manifest.version != version:
            raise ModelError(f"{folder}: manifest says {manifest.name}/{manifest.version}, folder is {name}/{version}")
        if self._factory is None:
            return manifest, OrtRuntime(folder, manifest, self._threads, model_bytes=blob)
        return manifest, self._factory(folder, manifest)

    def _public(self, message: str) -> str:
        """``message`` with the models directory's own path cut to ``models``: the API shows it."""
        # Folders come from _folders(), under the resolved (absolute) directory.
        return message.replace(str(self.dir.resolve()), "models")

"""The ``mlflow`` logger: one MLflow run per mtkd run (``mtkd[mlflow]``).

The runs of a study share one experiment (the study's name; a lone run's is its recipe's
name), tagged with their seed. Params are the flattened recipe, metrics every epoch's record
and the final test metrics, artefacts ``results.json``, the recipe, the figures and the
distilled model. The store is ``output.mlflow_uri``, by default a SQLite database with its
artefacts in ``mlruns/`` beside ``output.root`` (no server needed). The run's id is kept in
``<run>/mlflow.json`` so that ``mtkd resume`` continues the same MLflow run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import MtkdError
from ..loggers import Logger, RunStart, Status, final_metrics, flat_recipe, numeric_items
from ..utils.layout import MLFLOW_RUN

STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
BATCH = 100  # MLflow's limit of params per log_batch call
REACH_TIMEOUT_S = 5.0  # how long start-up waits for a tracking server's first answer


def default_store(cfg: Any) -> tuple[str, str]:
    """(tracking URI, artefact folder URI): ``mlruns/`` beside the runs root."""
    folder = (Path(cfg.output.root).resolve().parent / "mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


@contextmanager
def _named_errors(uri: str) -> Iterator[None]:
    """MLflow's own errors (a bad URI, an unreachable server) become one line naming the key."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MtkdError(f"output.mlflow_uri ({uri}): {message}") from exc


REPLACED = "mtkd.replaced"  # tag of an MLflow run whose folder a later run took (--force)


def mark_replaced(run_dir: Path) -> str | None:
    """Tag the MLflow run that ``run_dir``'s ``mlflow.json`` names as replaced, before
    ``mtkd run --force`` deletes that run's files: its numbers stay in MLflow, but it no longer
    points at a folder that holds it. Returns a line for the console (None: no MLflow run).
    Never raises: an unreachable store or a missing ``mlflow`` is said, and the new run goes
    on."""
    saved = Path(run_dir) / MLFLOW_RUN
    if not saved.is_file():
        return None
    try:
        info = json.loads(saved.read_text())
        uri, run_id = str(info["tracking_uri"]), str(info["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"warning: '{saved}' is unreadable ({exc}); its MLflow run is not tagged replaced"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        client.set_tag(run_id, REPLACED, "true")
        client.set_tag(run_id, "mtkd.replaced_at", stamp)
        note = f"Replaced on {stamp}: `mtkd run --force` started a new run in {run_dir}."
        client.set_tag(run_id, "mlflow.note.content", note)  # the run's description in the UI
    except Exception as exc:  # ImportError, an unreachable store, a deleted run
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"warning: MLflow run {run_id} in {uri} could not be tagged replaced: {detail}"
    return f"mlflow: run {run_id} tagged {REPLACED}=true (its folder now holds a new run)"


def check_server(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """An ``http(s)://`` tracking server answers within ``timeout`` seconds, else one line.

    MLflow's own client retries a refused or silent server with back-off for minutes, with
    nothing on the console; any HTTP answer (even an error status) shows a live server."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return  # a file or database store: MLflow reports its own errors at once
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MtkdError(
            f"output.mlflow_uri ({uri}): the tracking server did not answer within "
            f"{timeout:g} s ({reason}); start it, fix the URI, or leave it unset for a local store"
        ) from exc


class MlflowLogger(Logger):
    """Logs through ``MlflowClient`` (no global active run: several runs never mix)."""

    name = "mlflow"
    requires = ("mlflow",)
    install = "mtkd[mlflow]"

    @classmethod
    def check_reachable(cls, cfg: Any) -> None:
        if cfg.output.mlflow_uri:
            check_server(str(cfg.output.mlflow_uri))

    def start(self, run: RunStart) -> None:
        from mlflow.tracking import MlflowClient

        saved = run.run_dir / MLFLOW_RUN
        if run.resumed and saved.is_file():  # the store the run began in, whatever is set now
            info = json.loads(saved.read_text())
            self.uri, self.run_id = info["tracking_uri"], info["run_id"]
            self.client = MlflowClient(tracking_uri=self.uri)
            with _named_errors(self.uri):
                self.client.update_run(self.run_id, status="RUNNING")
                self._log_params(run, skip=set(self.client.get_run(self.run_id).data.params))
            return
        artefacts = None
        if self.cfg.output.mlflow_uri:
            self.uri = str(self.cfg.output.mlflow_uri)
        else:
            self.uri, artefacts = default_store(self.cfg)
        self.client = MlflowClient(tracking_uri=self.uri)
        with _named_errors(self.uri):
            experiment = self.client.get_experiment_by_name(run.experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(run.experiment, artifact_location=artefacts)
            )
            tags = {"seed": str(run.recipe.trainer.seed), "recipe": str(run.recipe.name)}
            created = self.client.create_run(
                experiment_id, run_name=run.run_dir.name, tags={**tags, "run_dir": str(run.run_dir)}
            )
            self.run_id = created.info.run_id
            self._log_params(run, skip=set())
        saved.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")

    def _log_params(self, run: RunStart, skip: set[str]) -> None:
        """The flattened recipe; on resume only keys the run lacks (MLflow params are
        immutable, and resuming may change e.g. ``trainer.max_epochs``)."""
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flat_recipe(run.recipe).items() if k not in skip]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        with _named_errors(self.uri):
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        self._log_metrics(numeric_items(record), epoch)

    def end(self, results: Mapping[str, Any], artefacts: Sequence[Path]) -> None:
        step = int(results.get("epochs_run") or 0)
        self._log_metrics(final_metrics(results), step)
        with _named_errors(self.uri):
            for path in artefacts:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
                elif path.is_file():
                    self.client.log_artifact(self.run_id, str(path))

    def close(self, status: Status) -> None:
        if getattr(self, "run_id", None):
            with _named_errors(self.uri):
                self.client.set_terminated(self.run_id, status=STATUS[status])

    def describe(self) -> str:
        return f"mlflow: run {self.run_id} in {self.uri} (mlflow ui --backend-store-uri {self.uri})"

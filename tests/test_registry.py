"""Registry and promotion rules against a real SQLite store and the real MLflow registry (no mocks)."""

import threading
import time

import pytest


@pytest.fixture(scope="module")
def run_id(tmp_path_factory):
    """A store with one run holding a logged tiny generator; every test registers versions from it."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from models.config import resolve_config
    from models.step import build_state
    from tasks.model_io import log_generator
    from tasks.tracking import configure_tracking, ensure_experiment

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    configure_tracking(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}")
    cfg = resolve_config("tiny")
    with mlflow.start_run(experiment_id=ensure_experiment("t_registry")) as run:
        log_generator(build_state(cfg), cfg)
    yield run.info.run_id
    track_utils._tracking_uri, reg_utils._registry_uri = saved


def _version(run_id, model, value, fingerprint="fp1", extractor="inception_v3", metric="fid"):
    from tasks.registry import register_version

    return register_version(run_id, model, {metric: value, "recall": 0.5}, extractor, fingerprint)


def _aliases(model):
    from mlflow.tracking import MlflowClient

    return {k: str(v) for k, v in MlflowClient().get_registered_model(model).aliases.items()}


def _tags(model, version):
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_model_version(model, version).tags


def test_lower_is_better_by_metric_name():
    from tasks.registry import lower_is_better

    assert all(map(lower_is_better, ["fid", "kid", "fd_inception_random", "kd_inception_random", "sifid",
                                     "sifid_inception_random"]))
    assert not any(map(lower_is_better, ["precision", "recall", "density", "coverage", "recall_inception_random"]))
    with pytest.raises(ValueError, match="unknown direction"):
        lower_is_better("mystery")


def test_register_version_tags_metrics_extractor_fingerprint(run_id):
    v = _version(run_id, "t_tags", 12.5)
    tags = _tags("t_tags", v)
    assert tags["metric.fid"] == "12.5" and tags["metric.recall"] == "0.5"
    assert tags["feature_extractor"] == "inception_v3" and tags["dataset_fingerprint"] == "fp1"
    assert tags["run_id"] == run_id and tags["model_family"] == "t_tags"


def test_the_registered_model_is_described_once_and_a_human_edit_is_kept(run_id):
    from mlflow.tracking import MlflowClient

    from tasks.registry import Version, model_description, register_version

    client = MlflowClient()
    v = register_version(run_id, "t_described", {"fid": 3.0}, "inception_v3", "fp1", family="transsrgan")
    assert client.get_registered_model("t_described").description == model_description("t_described", "transsrgan")
    assert "transsrgan sample --model models:/t_described@champion" in model_description("t_described")
    assert Version.of(client.get_model_version("t_described", v)).metrics() == {"fid": 3.0}
    client.update_registered_model("t_described", description="ours: do not touch")
    register_version(run_id, "t_described", {"fid": 2.0}, "inception_v3", "fp1", family="transsrgan")
    assert client.get_registered_model("t_described").description == "ours: do not touch"


def test_register_rejects_a_run_without_that_model(run_id):
    from tasks.registry import register_version

    with pytest.raises(LookupError, match="no logged model named 'nope'"):
        register_version(run_id, "t_missing", {"fid": 1.0}, "inception_v3", "fp1", artifact="nope")


def test_promotion_rules_first_better_worse_margin(run_id):
    from tasks.registry import promote

    m = "t_rules"
    v1 = _version(run_id, m, 20.0)
    d = promote(m, v1, "fid")
    assert d.promoted and d.alias == "champion" and d.champion_version == v1 and "first" in d.reason

    v2 = _version(run_id, m, 15.0)                       # better
    d = promote(m, v2, "fid")
    assert d.promoted and _aliases(m)["champion"] == v2
    assert _tags(m, v2)["promotion.decision"] == "champion" and "beats" in _tags(m, v2)["promotion.reason"]
    assert _tags(m, v1)[f"promotion.v{v2}.decision"] == f"replaced by v{v2}"

    v3 = _version(run_id, m, 16.0)                       # worse
    d = promote(m, v3, "fid")
    assert not d.promoted and d.alias == "challenger" and d.champion_version == v2
    assert _aliases(m) == {"champion": v2, "challenger": v3}
    assert "does not beat" in _tags(m, v3)["promotion.reason"]
    assert _tags(m, v2)[f"promotion.v{v3}.decision"] == f"kept against v{v3}"
    assert "does not beat" in _tags(m, v2)[f"promotion.v{v3}.reason"]

    v4 = _version(run_id, m, 14.5)                       # better, but not by the margin
    d = promote(m, v4, "fid", margin=1.0)
    assert not d.promoted and _aliases(m)["champion"] == v2
    d = promote(m, v4, "fid", margin=0.25)
    assert d.promoted and _aliases(m)["champion"] == v4


def test_higher_is_better_metric(run_id):
    from tasks.registry import promote

    m = "t_recall"
    v1 = _version(run_id, m, 0.4, metric="recall_x")
    v2 = _version(run_id, m, 0.3, metric="recall_x")
    promote(m, v1, "recall_x", lower_is_better=False)
    assert not promote(m, v2, "recall_x", lower_is_better=False).promoted


@pytest.mark.parametrize("kw, what", [({"fingerprint": "fp2"}, "dataset fingerprint differs"),
                                      ({"extractor": "inception_random"}, "feature extractor differs")])
def test_different_fingerprint_or_extractor_is_not_compared(run_id, kw, what):
    from tasks.registry import promote

    m = f"t_incomparable_{what.split()[0]}"
    v1 = _version(run_id, m, 20.0)
    promote(m, v1, "fid")
    v2 = _version(run_id, m, 1.0, **kw)                  # far "better", but measured differently
    d = promote(m, v2, "fid")
    assert not d.promoted and d.alias == "challenger" and _aliases(m)["champion"] == v1
    assert d.reason.startswith("not compared") and what in d.reason
    assert what in _tags(m, v2)["promotion.reason"]
    assert what in _tags(m, v1)[f"promotion.v{v2}.reason"]


def _slow_policy(after_decide):
    """The global policy, but `after_decide` runs between reading the champion and writing the aliases."""
    from tasks.registry import GLOBAL, PromotionPolicy

    class Slow(PromotionPolicy):
        def decide(self, *args, **kwargs):
            out = super().decide(*args, **kwargs)
            after_decide()
            return out

    return Slow(comparable_on=GLOBAL.comparable_on)


@pytest.mark.parametrize("use_lock", [True, False], ids=["file-lock", "converge-only"])
def test_concurrent_promotions_end_on_the_better_model(run_id, use_lock):
    """The worse promoter reads the old champion first and writes last: without a mechanism it would win."""
    from tasks.registry import GLOBAL, promote

    m = f"t_race_{use_lock}"
    v1 = _version(run_id, m, 20.0)
    promote(m, v1, "fid")
    better, worse = _version(run_id, m, 5.0), _version(run_id, m, 8.0)
    worse_has_read = threading.Event()
    results, errors = {}, []

    def run(version, policy):
        try:
            results[version] = promote(m, version, "fid", use_lock=use_lock, policy=policy)
        except Exception as exc:   # surfaced below
            errors.append(exc)

    def slow_worse():
        worse_has_read.set()
        time.sleep(1.0)                                   # the better one runs meanwhile (if it can)

    t_worse = threading.Thread(target=run, args=(worse, _slow_policy(slow_worse)))
    t_better = threading.Thread(target=run, args=(better, GLOBAL))
    t_worse.start()
    assert worse_has_read.wait(60)
    t_better.start()
    t_worse.join(120)
    t_better.join(120)
    assert not errors, errors
    assert _aliases(m)["champion"] == better
    assert results[better].champion_version == better or results[worse].champion_version == better
    worse_tags = _tags(m, worse)   # lost outright, or won against v1 first and was then replaced
    assert (worse_tags["promotion.decision"] == "challenger"
            or worse_tags[f"promotion.v{better}.decision"] == f"replaced by v{better}"), worse_tags


def test_without_the_guard_the_race_is_real(run_id, monkeypatch):
    """The same race with no lock and no converge step leaves the worse version as champion: the test above can
    fail, and what makes it pass is the guard."""
    import tasks.registry as registry

    m = "t_race_unguarded"
    v1 = _version(run_id, m, 20.0)
    registry.promote(m, v1, "fid")
    better, worse = _version(run_id, m, 5.0), _version(run_id, m, 8.0)
    monkeypatch.setattr(registry, "converge", lambda client, name, policy, scope, metric, lower:
                        registry.by_alias(client, name, policy.champion_alias(scope)))
    worse_has_read, better_done = threading.Event(), threading.Event()

    def slow_worse():
        worse_has_read.set()
        assert better_done.wait(60)

    t_worse = threading.Thread(target=registry.promote, args=(m, worse, "fid"),
                               kwargs={"use_lock": False, "policy": _slow_policy(slow_worse)})
    t_worse.start()
    assert worse_has_read.wait(60)
    registry.promote(m, better, "fid", use_lock=False)
    better_done.set()
    t_worse.join(120)
    assert _aliases(m)["champion"] == worse


@pytest.mark.slow
def test_concurrent_promotions_in_two_processes(run_id, tmp_path):
    """Two OS processes promote at once against the same SQLite store; champion ends on the better one."""
    import subprocess
    import sys

    import mlflow

    from tasks.registry import promote

    m = "t_race_procs"
    v1 = _version(run_id, m, 20.0)
    promote(m, v1, "fid")
    better, worse = _version(run_id, m, 5.0), _version(run_id, m, 8.0)
    # Each process widens its own race window: the policy's decide() sleeps before the aliases are written.
    code = ("import sys, time; import tasks.registry as r; from tasks.tracking import configure_tracking; "
            "configure_tracking(sys.argv[1]); decide = r.PromotionPolicy.decide; "
            "r.PromotionPolicy.decide = lambda *a, **k: (decide(*a, **k), time.sleep(float(sys.argv[4])))[0]; "
            "print(r.promote(sys.argv[2], sys.argv[3], 'fid'))")
    uri = mlflow.get_tracking_uri()
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, m, v, delay], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for v, delay in ((worse, "1.0"), (better, "0"))]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    assert _aliases(m)["champion"] == better

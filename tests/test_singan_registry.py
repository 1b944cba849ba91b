"""Per-image champions of the `singan` registered model: the pure rule, and the aliases on a real SQLite registry."""

import pytest

from tasks.registry import PER_IMAGE, Version
from tasks.tags import image_slug


def tags(image="hubble", fp="aa", extractor="inception-v3-random-seed0", size="18x20", sifid=None):
    out = {"image": image, "image_fingerprint": fp, "feature_extractor": extractor, "eval_size": size}
    if sifid is not None:
        out["metric.sifid_inception_random"] = repr(sifid)
    return out


M = "sifid_inception_random"


def decide(new_tags, champ_tags, metric, margin=0.0):
    """PER_IMAGE's pure rule on versions 2 (new) and 1 (champion) with these tags; lower is better."""
    champ = Version("1", champ_tags) if champ_tags is not None else None
    return PER_IMAGE.decide(Version("2", new_tags), champ, metric, lower=True, margin=margin)


def test_image_slug_fits_mlflow_alias_rules():
    assert image_slug("hubble_deep_field") == "hubble_deep_field"
    assert image_slug("My Photo (2).JPG") == "my-photo-2-jpg"
    assert image_slug("///") == "image"
    assert len(image_slug("x" * 300)) == 64
    assert PER_IMAGE.champion_alias(image_slug("v1")) == "champion-v1"      # never a reserved bare version alias


def test_decide_first_version_of_an_image_is_champion():
    promoted, reason = decide(tags(sifid=3.0), None, M)
    assert promoted and "first version" in reason


@pytest.mark.parametrize("new, beats", [(1.0, True), (2.95, False), (3.0, False), (4.0, False)])
def test_decide_lower_sifid_wins_by_more_than_the_margin(new, beats):
    promoted, reason = decide(tags(sifid=new), tags(sifid=3.0), M, margin=0.1)
    assert promoted is beats and "lower is better" in reason


@pytest.mark.parametrize("field, value, what", [("fp", "bb", "image content"),
                                                ("extractor", "inception-v3-pt_inception-2015-12-05",
                                                 "feature extractor"),
                                                ("size", "112x128", "evaluation size")])
def test_decide_does_not_compare_different_images_extractors_or_sizes(field, value, what):
    promoted, reason = decide(tags(sifid=0.1, **{field: value}), tags(sifid=3.0), M)
    assert not promoted and reason.startswith("not compared") and what in reason


def test_decide_needs_the_metric_on_both():
    assert not decide(tags(), tags(sifid=3.0), M)[0]
    assert not decide(tags(sifid=1.0), tags(), M)[0]


@pytest.fixture
def registry(tmp_path):
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from tasks.tracking import configure_tracking

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    configure_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    track_utils._tracking_uri, reg_utils._registry_uri = saved


def _add(client, image, sifid, fp=None):
    from tasks.registry import ensure_registered_model

    ensure_registered_model(client, "singan")
    t = {**tags(image=image, fp=fp or image, sifid=sifid), "model_family": "singan"}
    return str(client.create_model_version("singan", "file:///nowhere", tags=t).version)


def test_per_image_champions_and_the_latest_image_champion(registry):
    from mlflow.tracking import MlflowClient

    from tasks.registry import promote

    client = MlflowClient()

    def promote_image(version, metric):
        return promote("singan", version, metric)     # the policy follows the version's model_family tag

    def aliases():
        return {k: str(v) for k, v in client.get_registered_model("singan").aliases.items()}

    v1 = _add(client, "hubble", 5.0)
    assert promote_image(v1, M).promoted
    v2 = _add(client, "brick", 4.0)
    d = promote_image(v2, M)
    assert d.promoted and d.scope == "brick" and d.aliases == ("champion-brick", "champion")
    assert aliases() == {"champion": "2", "champion-hubble": "1", "champion-brick": "2"}
    v3 = _add(client, "hubble", 6.0)                 # worse than hubble's champion
    d = promote_image(v3, M)
    assert not d.promoted and d.champion_version == "1" and "does not beat" in d.reason
    assert d.aliases == ("challenger-hubble", "challenger")
    assert aliases() == {"champion": "1", "champion-hubble": "1", "champion-brick": "2",
                         "challenger": "3", "challenger-hubble": "3"}
    v4 = _add(client, "hubble", 2.0)                 # better: hubble's champion moves, brick's stays
    assert promote_image(v4, M).promoted
    assert aliases()["champion-hubble"] == "4" and aliases()["champion"] == "4" and aliases()["champion-brick"] == "2"
    tag = client.get_model_version("singan", "1").tags
    assert tag["promotion.v4.decision"] == "replaced by v4"
    assert client.get_model_version("singan", v4).tags["promotion.compared_with"] == "1"
    v5 = _add(client, "hubble", 0.5, fp="changed")   # same name, new content: not compared
    d = promote_image(v5, M)
    assert not d.promoted and "image content" in d.reason and aliases()["champion-hubble"] == "4"


def test_promote_per_image_needs_the_image_tag(registry):
    from mlflow.tracking import MlflowClient

    from tasks.registry import ensure_registered_model, promote

    client = MlflowClient()
    ensure_registered_model(client, "singan")
    v = client.create_model_version("singan", "file:///nowhere", tags={"model_family": "singan"}).version
    with pytest.raises(ValueError, match="image"):
        promote("singan", str(v), M)
    with pytest.raises(ValueError, match="image"):
        promote("singan", str(v), M, policy=PER_IMAGE)


@pytest.mark.parametrize("use_lock", [True, False], ids=["file-lock", "converge-only"])
def test_concurrent_promotions_of_one_image_end_on_the_better_version(registry, use_lock):
    """As for TransSRGAN: the worse promoter reads the image's champion first and writes last; the guard (lock,
    or claim + converge) still leaves champion-<image> and champion on the better version."""
    import threading

    from mlflow.tracking import MlflowClient

    from tasks.registry import PromotionPolicy, promote

    class Paused(PromotionPolicy):
        """PER_IMAGE, but decide() waits for `go_on` before the aliases are written."""

        def decide(self, *args, **kwargs):
            out = super().decide(*args, **kwargs)
            has_read.set()
            assert go_on.wait(60)
            return out

    client = MlflowClient()
    v1 = _add(client, "hubble", 5.0)
    promote("singan", v1, M)
    better, worse = _add(client, "hubble", 1.0), _add(client, "hubble", 2.0)
    has_read, go_on = threading.Event(), threading.Event()
    paused = Paused(comparable_on=PER_IMAGE.comparable_on, scope_tag=PER_IMAGE.scope_tag)
    errors = []

    def run_worse():
        try:
            promote("singan", worse, M, policy=paused, use_lock=use_lock)
        except Exception as exc:   # surfaced below
            errors.append(exc)

    t = threading.Thread(target=run_worse)
    t.start()
    assert has_read.wait(60)
    if use_lock:
        go_on.set()                        # it holds the lock: the better one can only run after it
    promote("singan", better, M, use_lock=use_lock)
    go_on.set()                            # without the lock, the worse one writes last
    t.join(120)
    assert not errors, errors
    aliases = {k: str(v) for k, v in client.get_registered_model("singan").aliases.items()}
    assert aliases["champion-hubble"] == better and aliases["champion"] == better

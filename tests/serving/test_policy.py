"""The gate and the version policies, and policy.json."""
import json

import pytest

from kindling.serving.policy import Gate, Policy, PolicyError, VersionPolicy, read_policy


def meta(results, dataset="digits-val"):
    return {"training": {"iteration": 3, "validation": {"dataset": dataset, "count": 400, "results": results}}}


def test_gate_reasons_say_what_is_missing_or_short():
    gate = Gate("Top1Accuracy", 0.7)
    assert gate.refusal(meta({"Top1Accuracy": 0.61})) == "Top1Accuracy 0.61 < 0.7 on digits-val"
    assert gate.refusal(meta({"Top1Accuracy": 0.7})) is None
    assert "no validation record" in gate.refusal({"training": {"iteration": 5}})
    assert "no validation record" in gate.refusal({})
    assert gate.refusal(meta({"Loss": 0.2})) == "the validation record has no Top1Accuracy (it has Loss)"
    assert Gate("Loss", 0.3).refusal(meta({"Loss": 0.41})) == "Loss 0.41 > 0.3 on digits-val"
    assert Gate().refusal(meta({"Top1Accuracy": 0.01})) is None  # no bound: validated is enough


def test_version_policies_choose_and_put_the_default_first():
    scores = {100: 0.90, 200: 0.95, 300: 0.93, 400: 0.95}
    assert VersionPolicy().choose(scores, "Top1Accuracy") == [400]  # best; a tie goes to the newer
    assert VersionPolicy().choose({1: 0.3, 2: 0.2}, "Loss") == [2]  # lower loss is better
    assert VersionPolicy("latest").choose(scores, "Top1Accuracy") == [400]
    assert VersionPolicy("latest", 3).choose(scores, "Top1Accuracy") == [400, 300, 200]
    assert VersionPolicy("pinned", pinned=(100, 300, 999)).choose(scores, "Top1Accuracy") == [300, 100]
    assert VersionPolicy().choose({}, "Top1Accuracy") == []


def test_policy_files(tmp_path):
    default = Policy(Gate("Top1Accuracy", 0.5))
    path = tmp_path / "policy.json"

    def read(spec):
        path.write_text(json.dumps(spec))
        return read_policy(path, default)

    assert read({}) == default
    assert read({"min": 0.9, "versions": {"latest": 2}}) == Policy(Gate("Top1Accuracy", 0.9), VersionPolicy("latest", 2))
    assert read({"metric": "Loss", "max": 0.3, "versions": {"pinned": [5, 7]}}).describe() == (
        "Loss <= 0.3", "pinned 5,7")
    assert read({"metric": "Top5Accuracy"}).gate == Gate("Top5Accuracy", None)  # the default bound is Top1's
    for spec, message in (({"min": "high"}, '"min" must be a number'), ({"metric": "Loss", "min": 1}, "give max"),
                          ({"versions": "newest"}, '"versions" must be'), ({"version": "best"}, "unknown fields"),
                          ({"versions": {"pinned": []}}, '"versions" must be'), ([1], "expected a JSON object")):
        with pytest.raises(PolicyError, match=message) as e:
            read(spec)
        assert str(path) in str(e.value)
    path.write_text("{not json")
    with pytest.raises(PolicyError, match="cannot read the policy"):
        read_policy(path, default)

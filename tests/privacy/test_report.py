import pytest

from privacy import ClientPrivacy, ClientReportError


def report():
    return ClientPrivacy(3, 120, 2.5, 1e-5, 1.1, 0.25, 40, 2)


def test_round_trip_through_reply_metrics():
    metrics = report().to_metrics()
    assert metrics["client-id"] == 3 and metrics["noise-multiplier"] == 1.1
    assert ClientPrivacy.from_metrics(metrics) == report()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epsilon": None}, "'epsilon' is not a number"),
        ({"steps": "ten"}, "'steps' is not a number"),
        ({"epsilon": float("nan")}, "reported epsilon nan"),
        ({"sample-rate": 0.0}, "q=0.0"),
        ({"delta": True}, "'delta' is not a number"),
    ],
)
def test_malformed_reports_are_rejected(change, message):
    metrics = {**report().to_metrics(), **change}
    with pytest.raises(ClientReportError, match=message):
        ClientPrivacy.from_metrics(metrics)


def test_missing_key_is_named():
    metrics = report().to_metrics()
    del metrics["sample-rate"]
    with pytest.raises(ClientReportError, match="no 'sample-rate' metric"):
        ClientPrivacy.from_metrics(metrics)

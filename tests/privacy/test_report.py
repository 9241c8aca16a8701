import pytest

from privet.privacy import ClientPrivacy, ClientReportError


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
        # A count that is not a whole number used to raise OverflowError or ValueError in int().
        ({"num-examples": float("inf")}, "'num-examples' is not a whole number: inf"),
        ({"num-examples": float("nan")}, "'num-examples' is not a whole number: nan"),
        ({"steps": 2.5}, "'steps' is not a whole number: 2.5"),
        ({"num-examples": -1}, "reported num-examples -1"),
        ({"num-examples": 1e300}, "reported num-examples 1000000"),
        ({"noise-multiplier": float("nan")}, "reported noise multiplier nan"),
        ({"epsilon": "x" * 500}, r"'epsilon' is not a number: 'xxxx.*\.\.\.$"),
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

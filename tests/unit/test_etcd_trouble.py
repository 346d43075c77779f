"""What etcd's and gRPC's errors become for a person (EtcdClient.trouble): gRPC's RESOURCE_EXHAUSTED is both a full
quota and a message past the size limit, and the two need different fixes. Real texts, as etcd 3.4 and grpcio say."""

import grpc
import pytest

from enforcer.errors import Failure, UserError
from enforcer.state.etcd_client import EtcdClient, EtcdOptions, Unanswered, parse_url


@pytest.fixture
def client():
    c = EtcdClient(parse_url("etcd://127.0.0.1:9/lab"), EtcdOptions())  # never connects: trouble() only reads the texts
    yield c
    c.close()


def test_a_message_past_the_size_limit_is_not_the_quota(client):
    said = client.trouble(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "grpc: received message larger than max (78123456 vs. 2097152)")
    assert isinstance(said, UserError) and "--max-request-bytes" in str(said) and "quota" not in str(said)
    assert "78123456" in str(said) and "nothing was changed" in str(said)


def test_the_quota_is_the_quota(client):
    said = client.trouble(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
    assert isinstance(said, Failure) and "space quota" in str(said)


@pytest.mark.parametrize("code, details", [(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
                                           (grpc.StatusCode.UNKNOWN, "context deadline exceeded")])
def test_a_deadline_passed_here_or_at_the_member_is_an_unknown_outcome(client, code, details):
    """The member answers UNKNOWN "context deadline exceeded" when the call's deadline passes there first (seen
    under load): the transaction may still commit, so it is tried again as if unanswered, never told failed."""
    assert isinstance(client.trouble(code, details), Unanswered)

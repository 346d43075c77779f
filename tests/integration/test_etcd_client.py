"""What the choice of etcd client rests on (docs/architecture.md, "Why this etcd client"), against a real etcd 3.4:
a watch resumed from a past revision, compaction reported as an exception carrying the compacted revision, a read
at a revision, a range compare that fails when a key is created in the range, leases that expire."""

from __future__ import annotations

import asyncio
import time

import pytest

from support.etcd import running_etcd

aetcd = pytest.importorskip("aetcd", reason="the [etcd] extra is not installed")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    with running_etcd(tmp_path_factory.mktemp("etcd")) as member:
        yield member


def test_watch_resumes_from_a_revision_and_reports_compaction(etcd):
    from aetcd.exceptions import RevisionCompactedError

    async def story() -> None:
        async with aetcd.Client("127.0.0.1", etcd.port) as c:
            first = (await c.put(b"/w/a", b"1")).header.revision
            for i in range(3):
                await c.put(b"/w/b", str(i).encode())
            events = await c.watch_prefix(b"/w/", start_revision=first + 1)
            seen = []
            async for event in events:
                seen.append((event.kv.key, event.kv.value, event.kv.mod_revision))
                if len(seen) == 3:
                    break
            await events.cancel()
            assert seen == [(b"/w/b", str(i).encode(), first + 1 + i) for i in range(3)]
            head = (await c.put(b"/w/c", b"x")).header.revision
            await c.compact(head, physical=True)
            with pytest.raises(RevisionCompactedError) as caught:
                async for _ in await c.watch_prefix(b"/w/", start_revision=first + 1):
                    pass
            assert caught.value.compacted_revision == head
    asyncio.run(asyncio.wait_for(story(), 20))


def test_reads_at_a_revision_range_compares_and_leases(etcd):
    from enforcer.state.etcd_client import Compacted, EtcdClient, EtcdOptions, parse_url

    client = EtcdClient(parse_url(etcd.url("r")), EtcdOptions())
    try:
        before = client.txn([], [client.put(b"/r/k", b"old")]).header.revision
        client.txn([], [client.put(b"/r/k", b"new")])
        assert client.range(b"/r/k", revision=before).kvs[0].value == b"old"  # MVCC: the state as it was
        # a range compare holds while nothing in the range was written after the revision, even an empty range
        assert client.txn([client.untouched_since(b"/r/x/", b"/r/x0", before + 1)],
                          [client.put(b"/r/x/1", b"v")]).succeeded
        assert not client.txn([client.untouched_since(b"/r/x/", b"/r/x0", before + 1)], []).succeeded
        assert client.txn([client.mod_is(b"/r/absent", 0)], []).succeeded  # 0: the key does not exist
        head = client.range(b"/r/k").header.revision
        etcd.ctl("compaction", "--physical", str(head))
        with pytest.raises(Compacted):
            client.range(b"/r/k", revision=before)
    finally:
        client.close()

    async def lease() -> None:
        async with aetcd.Client("127.0.0.1", etcd.port) as c:
            granted = await c.lease(1)
            await c.put(b"/r/alive", b"gw1", lease=granted)
            assert await c.get(b"/r/alive") is not None
            deadline = time.monotonic() + 6
            while await c.get(b"/r/alive") is not None:
                assert time.monotonic() < deadline, "the lease did not expire"
                await asyncio.sleep(0.2)
    asyncio.run(lease())


def test_pages_read_a_range_whole_in_order_halving_a_page_past_the_message_limit(etcd):
    from enforcer.state.etcd_client import EtcdClient, EtcdOptions, TooLarge, parse_url

    client = EtcdClient(parse_url(etcd.url("p")), EtcdOptions())
    try:
        written = {f"/p/k{i:03d}".encode(): bytes([65 + i % 26]) * 200 for i in range(50)}
        revision = client.txn([], [client.put(k, v) for k, v in written.items()]).header.revision
        client.txn([], [client.put(b"/p/k999", b"after")])  # not in the snapshot the pages read
        assert {bytes(kv.key): bytes(kv.value) for kv in client.pages(b"/p/", b"/p0", revision=revision,
                                                                        page=7)} == written
        # an answer of 50 such keys (~12 KB) is past a 4 KB limit: asked again in halves until a page fits
        client.channel_options = [o for o in client.channel_options if o[0] != "grpc.max_receive_message_length"]
        client.channel_options.append(("grpc.max_receive_message_length", 4096))
        client.channel.close()
        client._connect()
        with pytest.raises(TooLarge):
            client.range(b"/p/", b"/p0", revision=revision, limit=50)
        keys = [bytes(kv.key) for kv in client.pages(b"/p/", b"/p0", revision=revision, page=50)]
        assert keys == sorted(written)
    finally:
        client.close()


def test_many_single_keys_read_at_a_revision_in_order_absent_ones_empty(etcd):
    from enforcer.state.etcd_client import READS_PER_TXN, EtcdClient, EtcdOptions, parse_url

    client = EtcdClient(parse_url(etcd.url("m")), EtcdOptions())
    try:
        names = [f"/m/k{i}".encode() for i in range(READS_PER_TXN * 2 + 7)]  # three transactions
        revision = client.txn([], [client.put(k, b"old") for k in names[::2]]).header.revision
        client.txn([], [client.put(k, b"new") for k in names])
        answers = client.ranges(names, revision=revision)
        assert [[bytes(kv.value) for kv in a.kvs] for a in answers] == \
            [[b"old"] if i % 2 == 0 else [] for i in range(len(names))]
    finally:
        client.close()

"""The store-parity benchmark of issue 4: the cache, ClickHouse and Milvus checks against their floors.

    .venv/bin/python bench/stores.py [--only cache,clickhouse,milvus] [--users 1000000]
        [--messages 10000000] [--vectors 1000000] [--keep] [--name stores_bench]
        [--redis-url redis://127.0.0.1:6379/12] [--clickhouse-url URL] [--milvus-uri URI]

Data: ``{name}_backend`` / ``{name}_auth`` in PostgreSQL (created and migrated here, filled
server-side), Redis db of ``--redis-url`` (FLUSHED), ClickHouse database ``{name}``, Milvus
collection ``message_embeddings`` (a milvus-lite server of our own unless ``--milvus-uri``).
Each part injects 300 drifted entries, times the floor and ``manage.py checkconsistency`` on
that one check, checks that exactly the 300 were found, restores the data and writes
bench/results/stores-<date>.json.

- cache: N users, each cached as ``backend:user:{id}`` the way the cache helpers write it;
  150 entries made stale, 150 orphan entries. Floor: SCAN + pipelined MGET of every key, plus
  one scan of the payload columns of ``users``.
- clickhouse: N messages in PostgreSQL exported to ``message_events`` (version 1); 100 deleted
  there (missing), 100 changed (mismatch), 100 extra. Floor: one aggregate hash scan per side,
  alone; the slower one counts.
- milvus: V vectors of messages 1..V; 150 vectors missing, 150 orphan vectors. Floor: listing
  every id once (one query for every id, ids only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

from common import PG, PYTHON, ROOT, connect, refill, run_timed, write_result

sys.path.insert(0, str(ROOT))

SETUP = "SET synchronous_commit = off; SET maintenance_work_mem = '1GB'"
META = "CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text NOT NULL)"
CACHE_TTL = 7 * 24 * 3600  # entries must expire; long enough to outlive a --keep between runs
DRIFT = 300


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.backend_url = f"{PG}/{args.name}_backend"
        self.auth_url = f"{PG}/{args.name}_auth"
        self.clickhouse_url = args.clickhouse_url or f"clickhouse://default@127.0.0.1:9000/{args.name}"
        self.milvus_uri = args.milvus_uri
        self.milvus_proc: subprocess.Popen[bytes] | None = None

    # --- environment -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.backend_url,
            AUTH_DATABASE_URL=self.auth_url,
            REDIS_URL=self.args.redis_url,
            CLICKHOUSE_URL=self.clickhouse_url,
            MILVUS_URI=self.milvus_uri or "",
        )
        return env

    def django(self) -> None:
        """Set Django up in this process, on the benchmark's stores."""
        os.environ.update(self.env())
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        import django

        django.setup()

    def ensure_databases(self) -> None:
        with connect(f"{PG}/postgres") as conn:
            for url in (self.backend_url, self.auth_url):
                name = url.rsplit("/", 1)[1]
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    conn.execute(f'CREATE DATABASE "{name}"')
        for extra in ([], ["--database", "auth"]):
            cmd = [PYTHON, "manage.py", "migrate", "-v0", "--skip-checks", *extra]
            subprocess.run(cmd, check=True, cwd=ROOT, env=self.env(), stderr=subprocess.DEVNULL)
        with connect(self.backend_url) as conn:
            conn.execute(META)

    def meta(self) -> dict[str, str]:
        with connect(self.backend_url) as conn:
            return dict(conn.execute("SELECT key, value FROM bench_meta").fetchall())

    def set_meta(self, **values: Any) -> None:
        with connect(self.backend_url) as conn:
            for key, value in values.items():
                conn.execute(
                    "INSERT INTO bench_meta VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (key, str(value)),
                )

    def fill(self, table: str, insert: str, rows: int) -> None:
        """TRUNCATE and refill ``table`` server-side; indexes dropped for the load, rebuilt after."""
        refill(self.backend_url, table, insert.format(n=int(rows)), SETUP)

    def check(self, name: str) -> dict[str, Any]:
        """``manage.py checkconsistency NAME`` in its own process: wall time, the check's duration, drift."""
        cmd = [PYTHON, "manage.py", "checkconsistency", name, "--settle", "0", "--format", "json"]
        cmd += ["--limit", "100000", "--no-progress"]
        timed = run_timed(cmd, env=self.env())
        out: dict[str, Any] = {"seconds": timed.seconds, "peak_mb": timed.peak_mb}
        out["returncode"] = timed.returncode
        try:
            report = json.loads(timed.stdout)
            found = next(c for c in report["checks"] if c["name"] == name)
        except (ValueError, KeyError, StopIteration) as exc:
            out["error"] = f"{exc!r}: {timed.stderr[-600:]}"
            return out
        out["check_seconds"] = found["duration"]
        out["figures"] = found.get("figures")
        out["drift_count"] = found["drift_count"]
        out["drift"] = dict(Counter(d["kind"] for d in found["drifts"]))
        out["keys"] = sorted(d["key"] for d in found["drifts"])
        out["error"] = found.get("error")
        return out


def spread(rows: int, offset: int, count: int) -> list[int]:
    """``count`` row numbers spread evenly over 1..rows."""
    return [1 + k * (rows // count) + offset for k in range(count)]


def judged(result: dict[str, Any], expected: set[str], floor: float) -> dict[str, Any]:
    keys = set(result.pop("keys", []))
    result["exact"] = keys == expected
    if not result["exact"]:
        result["unexpected"] = sorted(keys - expected)[:10]
        result["not_found"] = sorted(expected - keys)[:10]
    result["ratio"] = round(result["seconds"] / floor, 2) if floor else None
    if result.get("check_seconds") is not None and floor:
        result["check_ratio"] = round(result["check_seconds"] / floor, 2)
    return result


# --- cache -----------------------------------------------------------------------------------

USERS = """
    INSERT INTO users (id, email, full_name, hashed_password, is_active, is_superuser, is_developer,
                       role, permissions, plan_tier, plan_started_at, feature_flags, created_at, updated_at)
    SELECT 'usr_' || i, 'user' || i || '@example.com', 'User ' || i, '$2b$12$' || md5('p' || i),
           mod(i, 17) <> 0, false, mod(i, 101) = 0, 'user',
           CASE WHEN mod(i, 7) = 0 THEN '["read", "write"]'::jsonb ELSE '[]'::jsonb END,
           CASE WHEN mod(i, 5) = 0 THEN 'pro' ELSE 'free' END,
           CASE WHEN mod(i, 5) = 0 THEN timestamptz '2025-01-01 00:00:00+00' + i * interval '1 second' END,
           jsonb_build_object('beta', mod(i, 3) = 0),
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second',
           timestamptz '2024-06-01 00:00:00.123456+00' + i * interval '1 second'
    FROM generate_series(1, {n}) i"""


def cache_part(b: Bench, users: int) -> dict[str, Any]:
    b.django()
    from django.core.cache import cache

    from consistency.cachekeys import BACKEND_USER_FIELDS, backend_user_key, backend_user_payload

    encoder: Any = cache.client  # type: ignore[attr-defined]  # django-redis' client
    raw = encoder.get_client(write=True)
    fields = ", ".join(BACKEND_USER_FIELDS)
    out: dict[str, Any] = {"users": users, "redis": b.args.redis_url}
    meta = b.meta()
    start = time.perf_counter()
    kept = meta.get("users") == str(users) and meta.get("cache") == "clean" and raw.dbsize() == users
    if not (b.args.keep and kept):
        b.set_meta(users=users, cache="loading")
        b.fill("users", USERS, users)
        raw.flushdb()
        with connect(b.backend_url) as conn, conn.transaction(), conn.cursor(name="users") as cur:
            cur.itersize = 20_000
            cur.execute(f"SELECT {fields} FROM users")
            pipe = raw.pipeline(transaction=False)
            for n, row in enumerate(cur, 1):
                obj = SimpleNamespace(**dict(zip(BACKEND_USER_FIELDS, row, strict=True)))
                key = cache.make_key(backend_user_key(obj.id))
                pipe.set(key, encoder.encode(backend_user_payload(obj)), ex=CACHE_TTL)
                if n % 10_000 == 0:
                    pipe.execute()
            pipe.execute()
        b.set_meta(cache="clean")
    out["load_seconds"] = round(time.perf_counter() - start, 1)
    out["keys"] = raw.dbsize()

    # Drift: 150 entries whose row changed since (stale), 150 entries of rows that are gone (orphan).
    stale = [f"usr_{i}" for i in spread(users, 5, DRIFT // 2)]
    orphans = [f"usr_{users + k}" for k in range(1, DRIFT // 2 + 1)]
    b.set_meta(cache="drift")
    with connect(b.backend_url) as conn:
        conn.execute("UPDATE users SET full_name = full_name || ' (renamed)' WHERE id = ANY(%s)", (stale,))
    pipe = raw.pipeline(transaction=False)
    for k, user_id in enumerate(orphans):
        obj = SimpleNamespace(**{f: None for f in BACKEND_USER_FIELDS})
        obj.id, obj.email, obj.full_name = user_id, f"gone{k}@example.com", "Gone"
        pipe.set(
            cache.make_key(backend_user_key(user_id)),
            encoder.encode(backend_user_payload(obj)),
            ex=CACHE_TTL,
        )
    pipe.execute()
    expected = {backend_user_key(i) for i in stale + orphans}

    floor = cache_floor(b, raw, cache.make_key(backend_user_key("")), fields)
    out["floor"] = floor
    out["check"] = judged(b.check("cache_backend_users"), expected, floor["seconds"])

    with connect(b.backend_url) as conn:
        conn.execute("UPDATE users SET full_name = 'User ' || substr(id, 5) WHERE id = ANY(%s)", (stale,))
    raw.delete(*[cache.make_key(backend_user_key(i)) for i in orphans])
    b.set_meta(cache="clean")
    return out


def cache_floor(b: Bench, raw: Any, prefix: str, fields: str) -> dict[str, Any]:
    """SCAN + pipelined MGET of every key (best batch of 1000 / 5000), plus one scan of the rows."""
    redis_times = {}
    for count in (1000, 5000):
        start = time.perf_counter()
        keys = 0
        batch: list[bytes] = []
        for key in raw.scan_iter(match=prefix + "*", count=count):
            batch.append(key)
            if len(batch) == count:
                pipe = raw.pipeline(transaction=False)
                pipe.mget(batch)
                pipe.execute()
                keys += len(batch)
                batch = []
        if batch:
            raw.mget(batch)
            keys += len(batch)
        redis_times[count] = time.perf_counter() - start
    start = time.perf_counter()
    rows = 0
    with connect(b.backend_url) as conn, conn.transaction(), conn.cursor(name="floor") as cur:
        cur.itersize = 20_000
        cur.execute(f"SELECT {fields} FROM users")
        for _ in cur:
            rows += 1
    pg = time.perf_counter() - start
    best = min(redis_times.values())
    return {
        "seconds": round(best + pg, 2),
        "redis_seconds": {k: round(v, 2) for k, v in redis_times.items()},
        "pg_seconds": round(pg, 2),
        "keys": keys,
        "rows": rows,
    }


# --- clickhouse ------------------------------------------------------------------------------

THREADS = """
    INSERT INTO threads (id, object, created_at, metadata_, user_id)
    SELECT 'thr_' || j, 'thread', 1700000000 + j, '{{}}'::jsonb, 'usr_' || mod(j, 10000)
    FROM generate_series(0, greatest({n} / 100, 1) - 1) j"""
MESSAGES = """
    INSERT INTO messages (id, object, created_at, role, content, assistant_id, run_id, metadata_,
                          embedding_id, thread_id)
    SELECT 'msg_' || i, 'thread.message', 1700000000 + i,
           CASE WHEN mod(i, 2) = 0 THEN 'user' ELSE 'assistant' END,
           jsonb_build_array(jsonb_build_object('type', 'text', 'text',
               jsonb_build_object('value', 'message ' || i, 'annotations', '[]'::jsonb))),
           CASE WHEN mod(i, 2) = 1 THEN 'asst_' || mod(i, 7) END, NULL, '{{}}'::jsonb,
           CASE WHEN i <= {{v}} THEN 'emb_' || i END, 'thr_' || mod(i, greatest({n} / 100, 1))
    FROM generate_series(1, {n}) i"""
# The same rows as events, built inside ClickHouse; content is the jsonb text PostgreSQL prints.
EVENTS = """
    INSERT INTO {db}.message_events (id, thread_id, user_id, role, assistant_id, run_id, content,
                                     created_at, version, deleted)
    SELECT concat('msg_', toString(i)), concat('thr_', toString(i % t)),
           concat('usr_', toString((i % t) % 10000)),
           {role}, if(i % 2 = 1, concat('asst_', toString(i % 7)), ''), '',
           concat('[{{"text": {{"value": "message ', toString(i),
                  '", "annotations": []}}, "type": "text"}}]'),
           toDateTime(1700000000 + i), {version}, {deleted}
    FROM (SELECT number + {first} AS i, toUInt64(greatest(intDiv({n}, 100), 1)) AS t FROM numbers({count}))
    {where}"""
ROLE = "if(i % 2 = 0, 'user', 'assistant')"


def ensure_messages(b: Bench, messages: int, vectors: int) -> None:
    """``messages`` messages (in ``messages / 100`` threads), 1..``vectors`` with an embedding id."""
    wanted = f"{messages} {vectors}"
    if b.args.keep and b.meta().get("messages") == wanted:
        return
    b.set_meta(messages="loading", events="stale", milvus="stale")
    b.fill("threads", THREADS, messages)
    b.fill("messages", MESSAGES.replace("{{v}}", str(int(vectors))), messages)
    b.set_meta(messages=wanted)


def clickhouse_part(b: Bench, messages: int) -> dict[str, Any]:
    b.django()
    from consistency.engine.analyticsfp import MESSAGES as SPEC
    from consistency.stores.analytics import connect as analytics
    from consistency.stores.analytics_schema import MESSAGE_EVENTS, ensure_schema, latest_rows_sql

    store = analytics(b.clickhouse_url)
    db = store.database
    out: dict[str, Any] = {"messages": messages, "clickhouse": store.query("SELECT version()")[0][0]}
    meta = b.meta()
    start = time.perf_counter()
    ensure_messages(b, messages, b.args.vectors)
    exists = store.query(
        "SELECT count() FROM system.tables WHERE database = %(db)s AND name = %(t)s",
        {"db": db, "t": MESSAGE_EVENTS},
    )[0][0]
    if not (b.args.keep and exists and meta.get("events") == f"clean {messages}"):
        b.set_meta(events="loading")
        store.execute(f"DROP TABLE IF EXISTS `{db}`.`{MESSAGE_EVENTS}`")
        ensure_schema(store)
        store.execute(
            EVENTS.format(
                db=db, role=ROLE, version=1, deleted=0, first=1, n=messages, count=messages, where=""
            )
        )
        b.set_meta(events=f"clean {messages}")
    out["load_seconds"] = round(time.perf_counter() - start, 1)

    # Drift: 100 events deleted (missing), 100 changed (mismatch), 100 extra ids.
    missing, changed = spread(messages, 3, 100), spread(messages, 7, 100)
    b.set_meta(events="drift")

    def write(ids: list[int], role: str, version: int, deleted: int, first: int = 1, count: int = 0) -> None:
        where = f"WHERE i IN ({', '.join(map(str, ids))})" if ids else ""
        store.execute(
            EVENTS.format(
                db=db,
                role=role,
                version=version,
                deleted=deleted,
                first=first,
                n=messages,
                count=count or messages,
                where=where,
            )
        )

    # Versions from the clock: above every version an earlier run's drift and restore wrote.
    version = time.time_ns() // 1000
    write(missing, ROLE, version, 1)
    write(changed, "'edited'", version, 0)
    write([], ROLE, version, 0, first=messages + 1, count=100)
    expected = {f"msg_{i}" for i in missing + changed + list(range(messages + 1, messages + 101))}

    pg_sql = f"SELECT count(*), sum(f) FROM ({SPEC.pg_select('f')}) s"
    ch_sql = f"SELECT count(), sum(f) FROM (SELECT {SPEC.fp_sql()} AS f FROM ({latest_rows_sql(MESSAGE_EVENTS, SPEC.columns, database=db)}))"
    start = time.perf_counter()
    with connect(b.backend_url) as conn:
        conn.execute(pg_sql).fetchone()
    pg = time.perf_counter() - start
    start = time.perf_counter()
    store.query(ch_sql)
    ch = time.perf_counter() - start
    floor = max(pg, ch)
    out["floor"] = {
        "seconds": round(floor, 2),
        "postgresql_seconds": round(pg, 2),
        "clickhouse_seconds": round(ch, 2),
    }
    out["check"] = judged(b.check("analytics_message_events"), expected, floor)

    write(missing + changed, ROLE, version + 1, 0)
    write([], ROLE, version + 1, 1, first=messages + 1, count=100)
    b.set_meta(events=f"clean {messages}")
    store.close()
    return out


# --- milvus ----------------------------------------------------------------------------------


def milvus_part(b: Bench, vectors: int) -> dict[str, Any]:
    import numpy as np

    b.django()
    from consistency.stores.vectors import VectorStore

    ensure_messages(b, b.args.messages, vectors)
    meta = b.meta()
    store = VectorStore(b.milvus_uri or "", "message_embeddings", 64, timeout=600)
    out: dict[str, Any] = {"vectors": vectors, "milvus": b.milvus_uri}
    missing = set(spread(vectors, 11, DRIFT // 2))
    orphans = [f"emb_orphan_{k}" for k in range(DRIFT // 2)]
    start = time.perf_counter()
    if not (b.args.keep and meta.get("vectors") == str(vectors) and meta.get("milvus") == "drift"):
        b.set_meta(vectors=vectors, milvus="loading")
        store.drop()
        store.ensure_collection()
        client = store._connect()
        rng = np.random.default_rng(4)
        ids = [i for i in range(1, vectors + 1) if i not in missing]
        inserting = time.perf_counter()
        # Batches of 5000: milvus-lite (pure Python) inserted 50,000 rows in 4.5 s so, in
        # 12.5 s in batches of 25,000. One flush at the end, none in between.
        for k in range(0, len(ids), 5000):
            chunk = ids[k : k + 5000]
            vecs = rng.random((len(chunk), 64), dtype=np.float32)
            rows = [
                {"embedding_id": f"emb_{i}", "message_id": f"msg_{i}", "vector": v}
                for i, v in zip(chunk, vecs, strict=True)
            ]
            client.insert(store.collection, rows)
        vecs = rng.random((len(orphans), 64), dtype=np.float32)
        client.insert(
            store.collection,
            [
                {"embedding_id": e, "message_id": f"gone_{e}", "vector": v}
                for e, v in zip(orphans, vecs, strict=True)
            ],
        )
        out["insert_seconds"] = round(time.perf_counter() - inserting, 1)
        out["insert_rate"] = round(len(ids) / (time.perf_counter() - inserting))
        flushing = time.perf_counter()
        client.flush(store.collection)
        out["flush_seconds"] = round(time.perf_counter() - flushing, 1)
        b.set_meta(milvus="drift")
    # Build the vector index now (a load builds what the background has not), not while timing.
    indexing = time.perf_counter()
    store._connect().release_collection(store.collection)
    store._connect().load_collection(store.collection, timeout=3600)
    out["index_seconds"] = round(time.perf_counter() - indexing, 1)
    out["load_seconds"] = round(time.perf_counter() - start, 1)
    out["count"] = store.count()
    expected = {f"emb_{i}" for i in missing} | set(orphans)

    # Listing every id once: one query for all of them (milvus-lite makes a pass over the
    # collection for each query, so pymilvus' query_iterator, a query a page of 16,384, costs
    # ~60 passes at 1M; the check asks for ranges of 250,000 ids, 4 passes).
    start = time.perf_counter()
    listed = store._connect().query(
        store.collection, filter='embedding_id >= ""', output_fields=["embedding_id"], timeout=3600
    )
    floor = time.perf_counter() - start
    out["floor"] = {"seconds": round(floor, 2), "ids": len(listed), "how": "one query for every id"}
    del listed
    out["check"] = judged(b.check("vectors_message_embeddings"), expected, floor)
    store.close()
    return out


def start_milvus(b: Bench) -> None:
    if b.milvus_uri:
        return
    port = b.args.milvus_port
    data = ROOT / "var" / "bench-milvus"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [str(ROOT / ".venv" / "bin" / "milvus-lite"), "server", "--data-dir", str(data)]
    b.milvus_proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT)
    b.milvus_uri = f"http://127.0.0.1:{port}"
    time.sleep(3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="cache,clickhouse,milvus", help="comma-separated parts")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse data a previous run left clean")
    parser.add_argument("--name", default="stores_bench", help="PostgreSQL / ClickHouse database prefix")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="its db is flushed")
    parser.add_argument("--clickhouse-url", default=None)
    parser.add_argument("--milvus-uri", default=None, help="default: a milvus-lite server of our own")
    parser.add_argument("--milvus-port", type=int, default=19539)
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - {"cache", "clickhouse", "milvus"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: cache, clickhouse, milvus")
    if "milvus" in parts and args.vectors > args.messages:
        parser.error("--vectors must not exceed --messages (vectors belong to messages 1..V)")
    b = Bench(args)
    b.ensure_databases()
    results: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(), "args": vars(args)}
    try:
        for part in parts:
            load = os.getloadavg()
            if part == "cache":
                results["cache"] = cache_part(b, args.users)
            elif part == "clickhouse":
                results["clickhouse"] = clickhouse_part(b, args.messages)
            else:
                start_milvus(b)
                results["milvus"] = milvus_part(b, args.vectors)
            results[part]["load_average"] = [round(x, 2) for x in load]
            report(part, results[part])
    finally:
        if b.milvus_proc is not None:
            b.milvus_proc.terminate()
            b.milvus_proc.wait()
    path = write_result("stores", results)
    print(f"results: {path.relative_to(ROOT)}")


def report(part: str, r: dict[str, Any]) -> None:
    check, floor = r["check"], r["floor"]
    size = {k: r[k] for k in ("users", "messages", "vectors") if k in r}
    print(
        f"{part} {size}: floor {floor['seconds']:.2f} s, checkconsistency {check['seconds']:.2f} s "
        f"(check itself {check.get('check_seconds')} s) = {check.get('ratio')}x floor "
        f"({check.get('check_ratio')}x without start-up); drift {check.get('drift')} "
        f"exact={check.get('exact')} error={check.get('error')}"
    )


if __name__ == "__main__":
    main()

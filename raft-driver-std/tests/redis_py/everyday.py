"""redis-py at its default settings (RESP3 in redis-py 8) against a raftkv node.

Usage: python3 everyday.py PORT [PORT ...]. Each group of everyday calls runs against the first
port; the WATCH group changes the key through the second (another node) when given. Exits non-zero
on the first mismatch; prints one line per group.
"""

import sys
import time

import redis

ports = [int(p) for p in sys.argv[1:]]
r = redis.Redis(port=ports[0], decode_responses=True)
other = redis.Redis(port=ports[-1], decode_responses=True)
prefix = f"py{time.time_ns()}:"


def k(name):
    return prefix + name


def group(name, fn):
    fn()
    print(f"ok {name}", flush=True)


def strings():
    assert r.set(k("s"), "v") is True
    assert r.get(k("s")) == "v"
    assert r.setnx(k("s"), "w") is False
    assert r.setnx(k("nx"), "w") is True
    assert r.getset(k("s"), "v2") == "v"
    assert r.getdel(k("nx")) == "w" and r.get(k("nx")) is None
    assert r.append(k("s"), "!") == 3 and r.strlen(k("s")) == 3
    assert r.getrange(k("s"), 0, 1) == "v2"
    assert r.setrange(k("s"), 1, "XY") == 3 and r.get(k("s")) == "vXY"
    assert r.incr(k("n")) == 1 and r.incrby(k("n"), 4) == 5 and r.decrby(k("n"), 2) == 3 and r.decr(k("n")) == 2
    assert r.incrbyfloat(k("f"), 1.5) == 1.5 and r.incrbyfloat(k("f"), 0.25) == 1.75
    assert r.mset({k("m1"): "a", k("m2"): "b"}) is True
    assert r.mget(k("m1"), k("m2"), k("missing")) == ["a", "b", None]
    assert r.msetnx({k("m1"): "x", k("m3"): "y"}) is False and r.get(k("m3")) is None
    assert r.exists(k("m1"), k("m2"), k("missing")) == 2
    assert r.delete(k("m1"), k("missing")) == 1 and r.unlink(k("m2")) == 1


def expiry():
    r.set(k("e"), "v")
    assert r.ttl(k("e")) == -1 and r.ttl(k("nope")) == -2
    assert r.expire(k("e"), 100) is True and 99 <= r.ttl(k("e")) <= 100
    assert r.pexpire(k("e"), 50_000) is True and 49_000 < r.pttl(k("e")) <= 50_000
    assert r.expire(k("e"), 10, nx=True) is False and r.expire(k("e"), 200, gt=True) is True
    assert r.persist(k("e")) is True and r.ttl(k("e")) == -1
    assert r.set(k("sx"), "v", ex=30) is True and 29 <= r.ttl(k("sx")) <= 30
    assert r.execute_command("PSETEX", k("psx"), 30_000, "v") is True and r.pttl(k("psx")) > 29_000
    assert r.getex(k("sx"), px=5_000) == "v" and r.pttl(k("sx")) <= 5_000
    assert r.getex(k("sx"), persist=True) == "v" and r.ttl(k("sx")) == -1
    assert r.set(k("px"), "v", px=50) is True
    at = int(time.time()) + 100
    assert r.expireat(k("e"), at) is True and r.expiretime(k("e")) == at
    assert r.set(k("kt"), "v", ex=100) and r.set(k("kt"), "w", keepttl=True) and r.ttl(k("kt")) > 0
    assert r.set(k("g"), "new", get=True) is None and r.set(k("g"), "newer", get=True) == "new"
    time.sleep(0.08)
    assert r.get(k("px")) is None, "expired after 50 ms"


def keys():
    for name in ("ka", "kb", "kc"):
        r.set(k("keys:" + name), "v")
    r.hset(k("keys:h"), "f", "v")
    assert sorted(r.keys(k("keys:*"))) == sorted(k("keys:" + n) for n in ("ka", "kb", "kc", "h"))
    assert sorted(r.scan_iter(match=k("keys:k*"), count=2)) == sorted(k("keys:" + n) for n in ("ka", "kb", "kc"))
    assert list(r.scan_iter(match=k("keys:*"), _type="hash")) == [k("keys:h")]
    assert r.type(k("keys:ka")) == "string" and r.type(k("keys:h")) == "hash" and r.type(k("nope")) == "none"
    assert r.rename(k("keys:ka"), k("keys:kz")) is True and r.get(k("keys:kz")) == "v"
    assert r.renamenx(k("keys:kz"), k("keys:kb")) is False
    assert r.randomkey() is not None
    assert r.dbsize() >= 4
    assert r.ping() is True and r.echo("hi") == "hi"
    seconds, micros = r.time()
    assert abs(seconds - time.time()) < 60 and 0 <= micros < 1_000_000


def hashes():
    h = k("hash")
    assert r.hset(h, mapping={"a": "1", "b": "2"}) == 2
    assert r.hset(h, "c", "3") == 1
    assert r.hget(h, "a") == "1" and r.hget(h, "zz") is None
    assert r.hmget(h, ["a", "zz", "c"]) == ["1", None, "3"]
    assert r.hgetall(h) == {"a": "1", "b": "2", "c": "3"}
    assert r.hgetall(k("nohash")) == {}
    assert r.hlen(h) == 3 and r.hexists(h, "b") is True and r.hexists(h, "zz") is False
    assert sorted(r.hkeys(h)) == ["a", "b", "c"] and sorted(r.hvals(h)) == ["1", "2", "3"]
    assert r.hincrby(h, "a", 10) == 11 and r.hincrbyfloat(h, "b", 0.5) == 2.5
    assert r.hsetnx(h, "a", "x") == 0 and r.hsetnx(h, "d", "4") == 1
    assert r.hstrlen(h, "a") == 2
    assert dict(r.hscan_iter(h, match="[ab]")) == {"a": "11", "b": "2.5"}
    assert r.hdel(h, "a", "zz") == 1
    try:
        r.get(h)
        raise AssertionError("GET on a hash must fail")
    except redis.ResponseError as e:
        assert str(e).startswith("WRONGTYPE"), e


def transactions():
    # redis-py's default pipeline is a MULTI/EXEC transaction.
    with r.pipeline() as p:
        p.set(k("t1"), "a").incr(k("t2")).get(k("t1"))
        assert p.execute() == [True, 1, "a"]
    # A command failing at run time fails alone; the rest of the transaction applied.
    with r.pipeline() as p:
        p.set(k("t3"), "text").incr(k("t3")).set(k("t4"), "b")
        result = p.execute(raise_on_error=False)
        assert result[0] is True and isinstance(result[1], redis.ResponseError) and result[2] is True, result
    assert r.get(k("t4")) == "b"
    # Optimistic locking: WATCH, another client writes, EXEC fails with WatchError and applies nothing.
    r.set(k("bal"), 10)
    with r.pipeline() as p:
        p.watch(k("bal"))
        balance = int(p.get(k("bal")))
        other.set(k("bal"), 100)
        p.multi()
        p.set(k("bal"), balance - 1)
        try:
            p.execute()
            raise AssertionError("EXEC must abort after a watched key changed")
        except redis.WatchError:
            pass
    assert r.get(k("bal")) == "100"
    # The transaction helper retries until the watched key stays put.
    def withdraw(p):
        balance = int(p.get(k("bal")))
        p.multi()
        p.set(k("bal"), balance - 1)

    r.transaction(withdraw, k("bal"))
    assert r.get(k("bal")) == "99"


def databases():
    # `db=1` in the client's settings: redis-py sends SELECT 1 on connect.
    r1 = redis.Redis(port=ports[0], db=1, decode_responses=True)
    assert r1.set(k("db"), "one") is True and r.get(k("db")) is None
    assert r1.get(k("db")) == "one" and r1.dbsize() >= 1
    assert r1.flushdb() is True and r1.get(k("db")) is None


def scripts():
    # redis-py's Lock: acquire with SET NX PX, extend and release with its Lua scripts (EVALSHA,
    # then SCRIPT LOAD on NOSCRIPT: this node has not seen them before).
    lock = r.lock(k("lock"), timeout=10)
    assert lock.acquire(blocking=False)
    assert not r.lock(k("lock"), timeout=10).acquire(blocking=False), "held"
    assert lock.extend(5)
    assert 10000 < r.pttl(k("lock")) <= 15000, r.pttl(k("lock"))
    thief = r.lock(k("lock"))
    thief.local.token = b"not-the-token"
    try:
        thief.release()
        raise AssertionError("releasing a lock held by another token must fail")
    except redis.exceptions.LockNotOwnedError:
        pass
    lock.release()
    assert r.get(k("lock")) is None
    # The same lock through another node: the script cache is per node, the lock is shared.
    lock2 = other.lock(k("lock"), timeout=10)
    assert lock2.acquire(blocking=False)
    assert not r.lock(k("lock")).acquire(blocking=False)
    lock2.release()
    # EVAL, EVALSHA, SCRIPT and a registered script.
    assert r.eval("return {KEYS[1], ARGV[1], 3}", 1, "a", "b") == ["a", "b", 3]
    sha = r.script_load("return redis.call('incrby', KEYS[1], ARGV[1])")
    assert r.script_exists(sha, "0" * 40) == [True, False]
    assert r.evalsha(sha, 1, k("sn"), 5) == 5
    incr = r.register_script("return redis.call('incrby', KEYS[1], ARGV[1]) * 2")
    assert incr(keys=[k("sn")], args=[1]) == 12
    assert r.script_flush() is True
    try:
        r.evalsha(sha, 1, k("sn"), 1)
        raise AssertionError("EVALSHA after SCRIPT FLUSH must fail")
    except redis.exceptions.NoScriptError:
        pass
    try:
        r.eval("return redis.call('incr', KEYS[1])", 1, k("s"))
        raise AssertionError("a failing redis.call fails the script")
    except redis.ResponseError as e:
        assert "not an integer" in str(e), e
    # A script inside a transaction runs in its entry.
    with r.pipeline() as p:
        p.set(k("ts"), "1").eval("return redis.call('get', KEYS[1])", 1, k("ts"))
        assert p.execute() == [True, "1"]


group("strings", strings)
group("expiry", expiry)
group("keys", keys)
group("hashes", hashes)
group("transactions", transactions)
group("databases", databases)
group("scripts", scripts)
print("redis-py all groups ok", flush=True)

"""The kv daemon through redis-py, as an application uses it.

    python tests/kv_redispy.py PORT PASSWORD PROTOCOL FORKROOT CTL_SOCKET

Runs every command kv implements through redis-py's own methods, with
RESP3 (redis-py's default, protocol=3) or RESP2, plus pipelines, active
expiry, errors as the exceptions redis-py raises for Redis' words, and a
reconnect after the kv daemon is SIGKILLed (found with `forkroot ctl
status --json`). Prints one line per check that failed and a closing
`N passed, N failed` line; exits 1 if any failed. Run by tests/kv_clients.rs.
"""

import json
import os
import signal
import subprocess
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PORT, PASSWORD, PROTOCOL, FORKROOT, CTL = sys.argv[1:6]
PORT, PROTOCOL = int(PORT), int(PROTOCOL)
passed = 0
failed = 0


def check(what, got, want):
    global passed, failed
    if got == want:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}: got {got!r}, want {want!r}", flush=True)


def raises(what, exc, text, f, *args, **kw):
    """`f(*args)` raises `exc` whose message contains `text`."""
    global passed, failed
    try:
        got = f(*args, **kw)
    except exc as e:
        if text in str(e):
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}: {type(e).__name__} {e!r} lacks {text!r}", flush=True)
        return
    except Exception as e:  # the wrong exception
        failed += 1
        print(f"FAIL {what}: raised {type(e).__name__} {e!r}, want {exc.__name__}", flush=True)
        return
    failed += 1
    print(f"FAIL {what}: returned {got!r}, want {exc.__name__}", flush=True)


def client(**kw):
    return redis.Redis(
        port=PORT, password=PASSWORD, protocol=PROTOCOL, decode_responses=True,
        socket_timeout=10, **kw,
    )


def kv_status():
    """The kv daemon's entry in `ctl status --json`, if it is running."""
    out = subprocess.run(
        [FORKROOT, "ctl", "--socket", CTL, "status", "--json"],
        capture_output=True, text=True, timeout=10,
    )
    for d in json.loads(out.stdout)["daemons"]:
        if d["name"] == "kv" and d["state"] == "running":
            return d
    return None


def kv_pid():
    d = kv_status()
    return d and d["pid"]


def no_allocation(what):
    """Everything so far ran in the steady state: nothing allocated."""
    alloc = kv_status()["alloc"]
    check(f"{what}: allocation policy", alloc["policy"], "forbid")
    check(f"{what}: steady-state allocations", alloc["allocs"], 0)


def handshake():
    r = client()
    check("ping", r.ping(), True)
    conn = r.connection_pool.get_connection()
    check("negotiated protocol", int(conn.protocol), PROTOCOL)
    r.connection_pool.release(conn)
    # No password, a wrong one: redis-py's AuthenticationError (without
    # retries: redis-py would try again, with backoff, before raising it).
    no_retry = Retry(NoBackoff(), 0)
    raises("no password", redis.AuthenticationError, "", redis.Redis(
        port=PORT, protocol=PROTOCOL, socket_timeout=10, retry=no_retry).ping)
    raises("wrong password", redis.AuthenticationError, "invalid username-password pair",
           redis.Redis(port=PORT, password="wrong", protocol=PROTOCOL, socket_timeout=10,
                       retry=no_retry).ping)
    check("client_id is an int", isinstance(r.client_id(), int), True)
    check("client_setname", r.client_setname("app-1"), True)
    check("client_getname", r.client_getname(), "app-1")
    check("client_setinfo", r.client_setinfo("lib-name", "mylib"), True)
    check("select 0", r.select(0), True)
    raises("select 1", redis.ResponseError, "DB index is out of range", r.select, 1)
    check("echo", r.echo("hi there"), "hi there")
    hello = r.execute_command("HELLO", PROTOCOL)
    if isinstance(hello, list):  # RESP2: a flat list of names and values
        hello = dict(zip(hello[::2], hello[1::2]))
    check("hello", (hello["server"], hello["proto"]), ("redis", PROTOCOL))
    # RESET logs a connection out: its next command needs AUTH again.
    # (Without retries: redis-py takes NOAUTH for a connection error and
    # would reconnect and authenticate again.)
    one = client(single_connection_client=True, retry=Retry(NoBackoff(), 0))
    check("reset", one.execute_command("RESET"), "RESET")
    raises("after reset", redis.AuthenticationError, "Authentication required", one.get, "k")
    check("auth", one.execute_command("AUTH", PASSWORD), True)
    check("after auth", one.get("absent"), None)
    one.close()
    return r


def strings(r):
    check("flushdb", r.flushdb(), True)
    check("set", r.set("s", "hello"), True)
    check("get", r.get("s"), "hello")
    check("get absent", r.get("absent"), None)
    check("set nx", r.set("s", "x", nx=True), None)
    check("set xx absent", r.set("absent", "x", xx=True), None)
    check("set ex", r.set("e", "1", ex=100), True)
    check("ttl", r.ttl("e"), 100)
    check("set px keepttl", r.set("e", "2", keepttl=True), True)
    check("pttl", 99_000 < r.pttl("e") <= 100_000, True)
    check("setnx", (r.setnx("s", "y"), r.setnx("n1", "y")), (False, True))
    check("setex", r.setex("se", 50, "v"), True)
    check("setex ttl", r.ttl("se"), 50)
    check("psetex", r.psetex("pse", 50_000, "v"), True)
    check("psetex ttl", r.ttl("pse"), 50)
    check("getset", (r.getset("s", "world"), r.get("s")), ("hello", "world"))
    check("getset absent", r.getset("gs", "1"), None)
    check("getdel", (r.getdel("gs"), r.exists("gs")), ("1", 0))
    check("getdel absent", r.getdel("gs"), None)
    check("getex ex", (r.getex("s", ex=30), r.ttl("s")), ("world", 30))
    check("getex persist", (r.getex("s", persist=True), r.ttl("s")), ("world", -1))
    check("getex pxat", r.getex("s", pxat=int(time.time() * 1000) + 60_000), "world")
    check("getex pxat ttl", r.ttl("s"), 60)
    check("getex plain", r.getex("absent"), None)
    check("append new", r.append("ap", "ab"), 2)
    check("append", r.append("ap", "cd" * 100), 202)
    check("strlen", (r.strlen("ap"), r.strlen("absent")), (202, 0))
    check("getrange", r.getrange("ap", 0, 3), "abcd")
    check("getrange negative", r.getrange("ap", -3, -1), "dcd")
    check("getrange out of range", r.getrange("ap", 500, 600), "")
    check("setrange", r.setrange("ap", 1, "XY"), 202)
    check("setrange read", r.getrange("ap", 0, 4), "aXYdc")
    check("setrange pads", (r.setrange("pad", 3, "z"), r.get("pad")), (4, "\x00\x00\x00z"))
    check("setrange empty", (r.setrange("nothing", 5, ""), r.exists("nothing")), (0, 0))
    check("incr", r.incr("c"), 1)
    check("incrby", r.incrby("c", 41), 42)
    check("decr", r.decr("c"), 41)
    check("decrby", r.decrby("c", 50), -9)
    check("incrbyfloat", r.incrbyfloat("f", 10.5), 10.5)
    check("incrbyfloat again", r.incrbyfloat("f", 0.1), 10.6)
    check("incrbyfloat int value", r.incrbyfloat("c", 1.5), -7.5)
    raises("incrbyfloat not a float", redis.ResponseError, "value is not a valid float",
           r.incrbyfloat, "s", 1)
    raises("incr not an int", redis.ResponseError, "value is not an integer or out of range",
           r.incr, "s")
    check("set max", r.set("max", str(2**63 - 1)), True)
    raises("incr overflow", redis.ResponseError, "increment or decrement would overflow",
           r.incr, "max")
    check("mset", r.mset({"m1": "1", "m2": "2"}), True)
    check("mget", r.mget("m1", "absent", "m2"), ["1", None, "2"])
    check("msetnx", r.msetnx({"m3": "3", "m4": "4"}), True)
    check("msetnx blocked", (r.msetnx({"m4": "x", "m5": "5"}), r.exists("m5")), (False, 0))
    check("exists", r.exists("m1", "m1", "absent"), 2)
    check("touch", r.touch("m1", "m2", "absent"), 2)
    check("delete", r.delete("m1", "absent"), 1)
    check("unlink", r.unlink("m2", "m3"), 2)
    check("type", (r.type("s"), r.type("absent")), ("string", "none"))


def keyspace(r):
    r.flushdb()
    check("expire", r.expire("absent", 10), False)
    r.set("k", "v")
    check("expire nx", r.expire("k", 100, nx=True), True)
    check("expire nx again", r.expire("k", 200, nx=True), False)
    check("expire xx", r.expire("k", 300, xx=True), True)
    check("expire gt lower", r.expire("k", 50, gt=True), False)
    check("expire gt higher", r.expire("k", 400, gt=True), True)
    check("expire lt higher", r.expire("k", 500, lt=True), False)
    check("expire lt lower", r.expire("k", 60, lt=True), True)
    check("ttl after options", r.ttl("k"), 60)
    check("pexpire", (r.pexpire("k", 90_000), r.ttl("k")), (True, 90))
    at = int(time.time()) + 1000
    check("expireat", (r.expireat("k", at), r.expiretime("k")), (True, at))
    check("pexpireat", (r.pexpireat("k", at * 1000 + 500), r.pexpiretime("k")),
          (True, at * 1000 + 500))
    check("persist", (r.persist("k"), r.persist("k"), r.ttl("k")), (True, False, -1))
    check("expiretime", (r.expiretime("k"), r.expiretime("absent")), (-1, -2))
    r.set("plain", "v")
    check("expire gt on no ttl", r.expire("plain", 100, gt=True), False)
    check("expire lt on no ttl", r.expire("plain", 100, lt=True), True)
    check("expire in the past deletes", (r.expire("plain", -1), r.exists("plain")), (True, 0))
    raises("expire nx xx", redis.ResponseError,
           "NX and XX, GT or LT options at the same time are not compatible",
           r.expire, "k", 10, nx=True, xx=True)
    raises("expire gt lt", redis.ResponseError,
           "GT and LT options at the same time are not compatible",
           r.expire, "k", 10, gt=True, lt=True)
    raises("expire not an int", redis.ResponseError, "value is not an integer",
           r.execute_command, "EXPIRE", "k", "soon")
    raises("setex 0", redis.ResponseError, "invalid expire time in 'setex' command",
           r.setex, "k", 0, "v")
    check("rename", (r.rename("k", "k2"), r.exists("k"), r.get("k2")), (True, 0, "v"))
    r.set("other", "o")
    check("renamenx taken", r.renamenx("k2", "other"), False)
    check("renamenx", r.renamenx("k2", "k3"), True)
    check("rename replaces", (r.rename("k3", "other"), r.get("other")), (True, "v"))
    raises("rename absent", redis.ResponseError, "no such key", r.rename, "absent", "x")
    check("randomkey", r.randomkey(), "other")
    r.flushdb()
    check("randomkey empty", r.randomkey(), None)
    names = {f"user:{i}" for i in range(300)} | {f"item:{i}" for i in range(50)}
    p = r.pipeline(transaction=False)
    for n in names:
        p.set(n, "1")
    p.execute()
    check("keys", set(r.keys("*")), names)
    check("keys pattern", set(r.keys("item:*")), {n for n in names if n.startswith("item:")})
    check("keys class", set(r.keys("item:[1-2]")), {"item:1", "item:2"})
    check("scan_iter", sorted(r.scan_iter(count=7)), sorted(names))
    check("scan_iter match", sorted(r.scan_iter(match="user:1?", count=20)),
          sorted(f"user:{i}" for i in range(10, 20)))
    check("scan_iter type", len(list(r.scan_iter(_type="string"))), len(names))
    check("scan_iter other type", list(r.scan_iter(_type="hash")), [])
    cursor, first = r.scan(0, count=5)
    check("scan step", isinstance(cursor, int) and len(first) <= 400, True)
    raises("scan bad cursor", redis.ResponseError, "invalid cursor", r.scan, "x")
    check("dbsize", r.dbsize(), len(names))


def pipelines(r):
    r.flushdb()
    p = r.pipeline(transaction=False)
    for i in range(200):
        p.set(f"p{i}", i)
        p.incr(f"p{i}")
    p.get("p199")
    p.mget("p0", "absent")
    p.incr("p0")
    p.execute_command("GET")
    results = p.execute(raise_on_error=False)
    check("pipeline sets", results[0:400:2], [True] * 200)
    check("pipeline incrs", results[1:400:2], list(range(1, 201)))
    check("pipeline get", results[400], "200")
    check("pipeline mget", results[401], ["1", None])
    check("pipeline incr", results[402], 2)
    check("pipeline error in place", isinstance(results[403], redis.ResponseError), True)
    check("pipeline wrong arity text", "wrong number of arguments for 'get' command"
          in str(results[403]), True)


def transactions(r):
    """redis-py's default pipeline: MULTI ... EXEC."""
    r.flushdb()
    p = r.pipeline()
    p.set("t", 1)
    p.incr("t")
    p.get("t")
    p.mget("t", "absent")
    p.expire("t", 100)
    p.ttl("t")
    check("multi/exec", p.execute(), [True, 2, "2", ["2", None], True, 100])
    p = r.pipeline()
    p.set("s", "text")
    p.incr("s")
    p.get("s")
    results = p.execute(raise_on_error=False)
    check("an error inside EXEC stays in its place",
          (results[0], isinstance(results[1], redis.ResponseError), results[2]),
          (True, True, "text"))
    p = r.pipeline()
    p.set("never", 1)
    p.execute_command("NOPE")
    raises("a refused command discards the block", redis.ResponseError, "NOPE", p.execute)
    check("nothing of it ran", r.exists("never"), 0)
    with r.pipeline() as p:
        for i in range(300):
            p.set(f"tx{i}", i)
        check("a block of 300", len(p.execute()), 300)
    check("all of it ran", r.get("tx299"), "299")


def errors(r):
    raises("unknown command", redis.ResponseError, "unknown command 'NOPE'",
           r.execute_command, "NOPE", "a")
    raises("wrong arity", redis.ResponseError, "wrong number of arguments for 'get' command",
           r.execute_command, "GET")
    raises("syntax", redis.ResponseError, "syntax error", r.execute_command,
           "SET", "a", "b", "NX", "XX")
    raises("out of range", redis.ResponseError, "offset is out of range", r.execute_command,
           "SETRANGE", "a", "-1", "x")
    raises("client subcommand", redis.ResponseError, "unknown subcommand 'NOPE'",
           r.execute_command, "CLIENT", "NOPE")


def info_and_config(r):
    info = r.info()
    check("info version", info["redis_version"].startswith("7."), True)
    check("info clients", info["connected_clients"] >= 1, True)
    check("config_get", r.config_get("databases"), {"databases": "1"})
    check("config_get pattern", "maxmemory" in r.config_get("max*"), True)


def active_expiry(r):
    r.flushdb()
    r.set("stays", "1")
    p = r.pipeline(transaction=False)
    for i in range(500):
        p.set(f"tmp{i}", "x", px=50)
    p.execute()
    # Never read: only active expiry can remove them.
    deadline = time.monotonic() + 10
    while r.dbsize() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    check("active expiry", r.dbsize(), 1)


def reconnect(r):
    check("write before kill", r.set("survivor", "acknowledged"), True)
    no_allocation("before the kill")
    pid = kv_pid()
    os.kill(pid, signal.SIGKILL)
    # The same client object: its connection broke, redis-py reconnects.
    deadline = time.monotonic() + 15
    got = None
    while time.monotonic() < deadline:
        try:
            got = r.get("survivor")
            break
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.05)
    check("value after the kill", got, "acknowledged")
    new = kv_pid()
    check("a new kv process", new is not None and new != pid, True)
    check("writes after the reconnect", r.incr("after"), 1)
    no_allocation("after the restart")


def main():
    r = handshake()
    strings(r)
    keyspace(r)
    pipelines(r)
    transactions(r)
    errors(r)
    info_and_config(r)
    active_expiry(r)
    reconnect(r)
    print(f"redis-py {redis.__version__} protocol={PROTOCOL}: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

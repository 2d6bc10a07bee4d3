#!/usr/bin/env python3
"""A program written for systemd's Type=notify, for the tests: it speaks
sd_notify(3) to $NOTIFY_SOCKET as its arguments say, one step each, then
sleeps until it is killed.

  send:TEXT          send TEXT as one datagram (a literal \\n is a newline)
  child-send:TEXT    a forked child (same session) sends TEXT, then lingers
  wait:PATH          wait until PATH exists
  env:PATH           write NOTIFY_SOCKET and WATCHDOG_USEC to PATH
  ping:SECS:EVERY    send WATCHDOG=1 every EVERY seconds for SECS seconds
  sleep:SECS         sleep
"""
import os
import socket
import sys
import time


def send(text):
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.replace("\\n", "\n").encode(), addr)


for step in sys.argv[1:]:
    verb, _, arg = step.partition(":")
    if verb == "send":
        send(arg)
    elif verb == "child-send":
        if os.fork() == 0:
            send(arg)
            time.sleep(2)
            os._exit(0)
    elif verb == "wait":
        while not os.path.exists(arg):
            time.sleep(0.02)
    elif verb == "env":
        with open(arg + ".tmp", "w") as f:
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
                f.write(f"{k}={os.environ.get(k, '')}\n")
        os.rename(arg + ".tmp", arg)
    elif verb == "ping":
        secs, every = (float(x) for x in arg.split(":"))
        end = time.monotonic() + secs
        while time.monotonic() < end:
            send("WATCHDOG=1")
            time.sleep(every)
    elif verb == "sleep":
        time.sleep(float(arg))
    else:
        sys.exit(f"unknown step {step!r}")

while True:
    time.sleep(3600)

# Opens N connections to a RESP server, sends one PING on each, then holds them idle for S seconds
# (docs/benchmarks.md, "Idle connections"): python3 scripts/idle_connections.py PORT N [S]
import socket, sys, time, resource

port=int(sys.argv[1]); n=int(sys.argv[2])
socks=[]
t=time.time()
for i in range(n):
    s=socket.create_connection(("127.0.0.1",port)); socks.append(s)
# one round trip on each, so every connection is fully set up
for s in socks: s.sendall(b"PING\r\n")
for s in socks: s.recv(16)
print(f"{n} connections set up in {time.time()-t:.2f}s", flush=True)
time.sleep(float(sys.argv[3]) if len(sys.argv)>3 else 3)

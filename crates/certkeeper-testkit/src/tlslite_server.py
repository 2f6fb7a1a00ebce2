# An SSLv3/TLS server from tlslite-ng (PyPI) for the scanner tests: SSLv3 is in no
# Debian TLS library any more. Prints its port, serves handshakes until killed.
import socket, sys, threading
from tlslite.api import X509, X509CertChain, parsePEMKey, HandshakeSettings, TLSConnection
cert, key, minv, maxv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
x = X509(); x.parse(open(cert).read())
chain = X509CertChain([x])
k = parsePEMKey(open(key).read(), private=True)
def ver(s): return {"ssl3": (3, 0), "tls1.0": (3, 1), "tls1.1": (3, 2), "tls1.2": (3, 3)}[s]
st = HandshakeSettings(); st.minVersion = ver(minv); st.maxVersion = ver(maxv)
st.cipherNames = ["aes256", "aes128", "3des", "rc4"]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
def serve(s):
    try:
        c = TLSConnection(s); c.handshakeServer(certChain=chain, privateKey=k, settings=st); c.close()
    except Exception:
        pass
    finally:
        s.close()
while True:
    s, _ = srv.accept(); s.settimeout(5)
    threading.Thread(target=serve, args=(s,), daemon=True).start()

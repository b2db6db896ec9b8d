/* The fan-out's per-viewer work in C: SRTP protect and batched UDP sends.
 *
 * Every viewer of a packet gets the same bytes, protected with its own SRTP session, on
 * one shared socket (broadcast/media/udp_mux.py). In Python that is a loop of protect
 * and sendto calls per viewer; here it is a memcpy and a libsrtp call per viewer and
 * one sendmmsg(2) per 256 viewers.
 *
 * send(fd, family, [(bytes, (host, port)), ...]) -> datagrams the kernel took.
 * fan_out(fd, family, protect, packet, [(session, (host, port), payload_type, ...), ...])
 *     -> (datagrams the kernel took, datagrams SRTP refused)
 * `protect` is the address of libsrtp's srtp_protect and `session` that of an srtp_t,
 * both from pylibsrtp (the same library, so the SRTP state is shared with the Python
 * path that sends retransmissions). payload_type -1 keeps the packet's own.
 * Outcome per datagram is the same as udp_mux.send_each: an address that cannot be
 * reached is skipped, a full socket buffer drops the rest.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 256
/* An RTP packet, plus libsrtp's largest trailer (SRTP_MAX_TRAILER_LEN, with MKI). */
#define MAX_PACKET 2048
#define MAX_TRAILER 144

typedef int (*protect_fn)(void *session, void *packet, int *length);

static unsigned char protected_packets[BATCH][MAX_PACKET + MAX_TRAILER];

/* 1: filled; 0: not an address of this family (the datagram is skipped); -1: error. */
static int
to_sockaddr(PyObject *addr, int family, struct sockaddr_storage *out, socklen_t *len)
{
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL)
        return -1;
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535)
        return 0;
    memset(out, 0, sizeof(*out));
    if (family == AF_INET6) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)out;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons((uint16_t)port);
        *len = sizeof(*sa);
        if (inet_pton(AF_INET6, host, &sa->sin6_addr) == 1)
            return 1;
        struct in_addr v4;
        if (inet_pton(AF_INET, host, &v4) != 1)
            return 0;
        sa->sin6_addr.s6_addr[10] = 0xff; /* IPv4-mapped, ::ffff:a.b.c.d */
        sa->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&sa->sin6_addr.s6_addr[12], &v4, 4);
        return 1;
    }
    struct sockaddr_in *sa = (struct sockaddr_in *)out;
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    *len = sizeof(*sa);
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1;
}

/* Send `filled` messages; returns how many the kernel took, or -1 when the socket is
 * full (the caller drops the rest). */
static Py_ssize_t
send_filled(int fd, struct mmsghdr *messages, int filled, int *full)
{
    Py_ssize_t sent = 0;
    int done = 0;
    *full = 0;
    while (done < filled) {
        int result = sendmmsg(fd, messages + done, (unsigned int)(filled - done), 0);
        if (result >= 0) {
            done += result;
            sent += result;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            *full = 1; /* buffer full: drop the rest */
            break;
        } else {
            done++; /* this datagram's address cannot be reached: skip it */
        }
    }
    return sent;
}

static void
fill(struct mmsghdr *message, struct iovec *vector, struct sockaddr_storage *address,
     socklen_t length, void *data, size_t size)
{
    vector->iov_base = data;
    vector->iov_len = size;
    memset(message, 0, sizeof(*message));
    message->msg_hdr.msg_name = address;
    message->msg_hdr.msg_namelen = length;
    message->msg_hdr.msg_iov = vector;
    message->msg_hdr.msg_iovlen = 1;
}

static struct mmsghdr messages[BATCH];
static struct iovec vectors[BATCH];
static struct sockaddr_storage addresses[BATCH];

static PyObject *
send_datagrams(PyObject *Py_UNUSED(self), PyObject *args)
{
    int fd, family, full = 0;
    PyObject *outbox;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &outbox))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(outbox), next = 0, sent = 0;
    while (next < count && !full) {
        int filled = 0;
        for (; next < count && filled < BATCH; next++) {
            PyObject *item = PyList_GET_ITEM(outbox, next);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
                PyErr_SetString(PyExc_TypeError, "outbox items are (bytes, address)");
                return NULL;
            }
            socklen_t length;
            int usable = to_sockaddr(PyTuple_GET_ITEM(item, 1), family,
                                     &addresses[filled], &length);
            if (usable < 0)
                return NULL;
            if (usable == 0)
                continue;
            PyObject *data = PyTuple_GET_ITEM(item, 0);
            fill(&messages[filled], &vectors[filled], &addresses[filled], length,
                 PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
            filled++;
        }
        sent += send_filled(fd, messages, filled, &full);
    }
    return PyLong_FromSsize_t(sent);
}

static PyObject *
fan_out(PyObject *Py_UNUSED(self), PyObject *args)
{
    int fd, family, full = 0;
    unsigned long long protect_address;
    Py_buffer packet;
    PyObject *targets;
    if (!PyArg_ParseTuple(args, "iiKy*O!", &fd, &family, &protect_address, &packet,
                          &PyList_Type, &targets))
        return NULL;
    protect_fn protect = (protect_fn)(uintptr_t)protect_address;
    Py_ssize_t count = PyList_GET_SIZE(targets), next = 0, sent = 0, refused = 0;
    if (packet.len < 12 || packet.len > MAX_PACKET) {
        PyBuffer_Release(&packet);
        return Py_BuildValue("nn", (Py_ssize_t)0, count);
    }
    while (next < count && !full) {
        int filled = 0;
        for (; next < count && filled < BATCH; next++) {
            PyObject *item = PyList_GET_ITEM(targets, next);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 3) {
                PyBuffer_Release(&packet);
                PyErr_SetString(PyExc_TypeError,
                                "targets are (session, address, payload_type, ...)");
                return NULL;
            }
            void *session = PyLong_AsVoidPtr(PyTuple_GET_ITEM(item, 0));
            long payload_type = PyLong_AsLong(PyTuple_GET_ITEM(item, 2));
            socklen_t length;
            int usable = session == NULL ? -1
                         : to_sockaddr(PyTuple_GET_ITEM(item, 1), family,
                                       &addresses[filled], &length);
            if (usable < 0 || PyErr_Occurred()) {
                PyBuffer_Release(&packet);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "a target has no SRTP session");
                return NULL;
            }
            if (usable == 0)
                continue;
            unsigned char *data = protected_packets[filled];
            memcpy(data, packet.buf, (size_t)packet.len);
            if (payload_type >= 0)
                data[1] = (unsigned char)((data[1] & 0x80) | (payload_type & 0x7f));
            int size = (int)packet.len;
            if (protect(session, data, &size) != 0) {
                refused++;
                continue;
            }
            fill(&messages[filled], &vectors[filled], &addresses[filled], length, data,
                 (size_t)size);
            filled++;
        }
        sent += send_filled(fd, messages, filled, &full);
    }
    PyBuffer_Release(&packet);
    return Py_BuildValue("nn", sent, refused);
}

static PyMethodDef methods[] = {
    {"send", send_datagrams, METH_VARARGS,
     "send(fd, family, [(bytes, (host, port)), ...]) -> datagrams sent"},
    {"fan_out", fan_out, METH_VARARGS,
     "fan_out(fd, family, protect, packet, targets) -> (sent, refused by SRTP)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fanout", "SRTP protect and batched UDP sends for the fan-out.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fanout(void)
{
    return PyModule_Create(&module);
}

/* Batched UDP sends: one sendmmsg(2) for many datagrams to many addresses.
 *
 * The fan-out sends the same packet, protected once per viewer, to every viewer on one
 * socket; a system call per datagram is most of the cost (broadcast/media/udp_mux.py).
 * send(fd, family, [(bytes, (host, port)), ...]) -> number of datagrams the kernel took.
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

static PyObject *
send_datagrams(PyObject *self, PyObject *args)
{
    int fd, family;
    PyObject *outbox;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &outbox))
        return NULL;

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_storage addresses[BATCH];
    Py_ssize_t count = PyList_GET_SIZE(outbox), next = 0, sent = 0;

    while (next < count) {
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
            vectors[filled].iov_base = PyBytes_AS_STRING(data);
            vectors[filled].iov_len = (size_t)PyBytes_GET_SIZE(data);
            memset(&messages[filled], 0, sizeof(messages[filled]));
            messages[filled].msg_hdr.msg_name = &addresses[filled];
            messages[filled].msg_hdr.msg_namelen = length;
            messages[filled].msg_hdr.msg_iov = &vectors[filled];
            messages[filled].msg_hdr.msg_iovlen = 1;
            filled++;
        }
        int done = 0;
        while (done < filled) {
            int result = sendmmsg(fd, messages + done, (unsigned int)(filled - done), 0);
            if (result >= 0) {
                done += result;
                sent += result;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                return PyLong_FromSsize_t(sent); /* buffer full: drop the rest */
            } else {
                done++; /* this datagram's address cannot be reached: skip it */
            }
        }
    }
    return PyLong_FromSsize_t(sent);
}

static PyMethodDef methods[] = {
    {"send", send_datagrams, METH_VARARGS,
     "send(fd, family, [(bytes, (host, port)), ...]) -> datagrams sent"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sendmmsg", "Batched UDP sends with sendmmsg(2).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__sendmmsg(void)
{
    return PyModule_Create(&module);
}

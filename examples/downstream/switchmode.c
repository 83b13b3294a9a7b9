/* switchmode: which calls this build uses to leave root for a while and come
 * back, chosen at compile time from uidprobe's verdicts (a value of 0 is left
 * undefined, so #ifdef tests it). */
#include <Python.h>

static PyObject *mechanism(PyObject *self, PyObject *unused) {
#if defined(HASSETRESUID) && defined(HASSETRESGID)
    return PyUnicode_FromString("setresuid"); /* setresuid(-1, uid, -1), later setresuid(-1, 0, -1) */
#elif defined(HASSETREUID) && defined(HASSETREGID)
    return PyUnicode_FromString("setreuid");
#elif defined(USESETEUID) && defined(USESETEGID)
    return PyUnicode_FromString("seteuid"); /* the saved set-user-ID keeps root reachable */
#else
    return PyUnicode_FromString("fork"); /* nothing comes back here: do the work in a child */
#endif
}

/* The uidprobe macros this module was compiled with, space-separated. */
static PyObject *macros(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(""
#ifdef USESETEUID
                                " USESETEUID"
#endif
#ifdef HASSETREUID
                                " HASSETREUID"
#endif
#ifdef SETUID_PERMANENT
                                " SETUID_PERMANENT"
#endif
#ifdef HASSETRESUID
                                " HASSETRESUID"
#endif
#ifdef USESETEGID
                                " USESETEGID"
#endif
#ifdef HASSETREGID
                                " HASSETREGID"
#endif
#ifdef SETGID_PERMANENT
                                " SETGID_PERMANENT"
#endif
#ifdef HASSETRESGID
                                " HASSETRESGID"
#endif
#ifdef SETGROUPS_CAN_CLEAR
                                " SETGROUPS_CAN_CLEAR"
#endif
#ifdef THREAD_CREDENTIALS
                                " THREAD_CREDENTIALS"
#endif
    );
}

static PyMethodDef methods[] = {
    {"mechanism", mechanism, METH_NOARGS, "the set*id calls this build switches with"},
    {"macros", macros, METH_NOARGS, "the uidprobe macros this module was compiled with"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "switchmode", NULL, -1, methods};

PyMODINIT_FUNC PyInit_switchmode(void) { return PyModule_Create(&module); }

/* execl, execlp, execle: libc implements them with an internal execve the shim never sees, so
 * they are interposed (exported by naked jumps in hooks/proc.rs; C because they are variadic)
 * and forwarded to execve and execvpe, whose hooks revoke ring mode on inherited sockets and
 * put the shim back into the environment. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

/* The kernel's own limit on argument count is far above this; a longer list fails with E2BIG
 * instead of overrunning the stack. */
#define MAX_ARGS 4096

extern char **environ;

static int collect(const char *arg0, va_list ap, char **argv) {
    int n = 0;
    argv[n++] = (char *)arg0;
    while (argv[n - 1] != NULL) {
        if (n == MAX_ARGS) {
            errno = E2BIG;
            return -1;
        }
        argv[n++] = va_arg(ap, char *);
    }
    return n;
}

int weft_execl(const char *path, const char *arg0, ...) {
    char *argv[MAX_ARGS];
    va_list ap;
    va_start(ap, arg0);
    int n = collect(arg0, ap, argv);
    va_end(ap);
    if (n < 0) return -1;
    return execve(path, argv, environ);
}

int weft_execlp(const char *file, const char *arg0, ...) {
    char *argv[MAX_ARGS];
    va_list ap;
    va_start(ap, arg0);
    int n = collect(arg0, ap, argv);
    va_end(ap);
    if (n < 0) return -1;
    return execvpe(file, argv, environ);
}

int weft_execle(const char *path, const char *arg0, ...) {
    char *argv[MAX_ARGS];
    va_list ap;
    va_start(ap, arg0);
    int n = collect(arg0, ap, argv);
    char **envp = va_arg(ap, char **);
    va_end(ap);
    if (n < 0) return -1;
    return execve(path, argv, envp);
}

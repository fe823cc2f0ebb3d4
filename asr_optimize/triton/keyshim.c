/* Keeps the bundled tritonserver's restricted-API key off its command line (see keyshim.py).
 *
 * Loaded with LD_PRELOAD, this constructor runs before tritonserver's main. glibc passes it the same argv array
 * that main gets. Every argument that starts with MARKER loses the marker and has each PLACEHOLDER replaced by
 * the key from KEY_ENV; the new string lives on the heap and only the argv POINTER changes, so the memory behind
 * /proc/<pid>/cmdline (world-readable) keeps showing the placeholder. The key is then wiped from the original
 * environment block (/proc/<pid>/environ) and unset, so the python backend stubs do not inherit it.
 * Without this library the marked arguments are stray positionals and tritonserver refuses to start.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEY_ENV "ASR_OPTIMIZE_TRITON_SERVER_KEY"
#define MARKER "@asr-optimize-keyshim@"
#define PLACEHOLDER "@ASR_OPTIMIZE_TRITON_KEY@"

static void fail(const char *what) {
    fprintf(stderr, "asr-optimize keyshim: %s\n", what);
    _exit(78);
}

static char *substitute(const char *arg, const char *key) {
    size_t plen = strlen(PLACEHOLDER), klen = strlen(key), n = 0;
    for (const char *p = strstr(arg, PLACEHOLDER); p; p = strstr(p + plen, PLACEHOLDER)) n++;
    char *out = malloc(strlen(arg) + n * klen + 1);
    if (!out) fail("out of memory");
    char *w = out;
    for (const char *p; (p = strstr(arg, PLACEHOLDER)); arg = p + plen) {
        memcpy(w, arg, (size_t)(p - arg));
        w += p - arg;
        memcpy(w, key, klen);
        w += klen;
    }
    strcpy(w, arg);
    return out;
}

static void drop_own_preload(void) {
    Dl_info info;
    const char *preload = getenv("LD_PRELOAD");
    if (preload && dladdr((void *)&drop_own_preload, &info) && info.dli_fname && !strcmp(preload, info.dli_fname))
        unsetenv("LD_PRELOAD");
}

__attribute__((constructor)) static void asr_optimize_keyshim(int argc, char **argv, char **envp) {
    (void)envp;
    char *value = getenv(KEY_ENV);
    char *key = value ? strdup(value) : NULL;
    size_t mlen = strlen(MARKER);
    if (value) {
        memset(value, 0, strlen(value));
        unsetenv(KEY_ENV);
    }
    for (int i = 1; argv && i < argc; i++) {
        if (!argv[i] || strncmp(argv[i], MARKER, mlen)) continue;
        if (!key || !*key) fail(KEY_ENV " is not set: refusing to start with a placeholder key");
        argv[i] = substitute(argv[i] + mlen, key);
    }
    drop_own_preload();
    if (key) {
        explicit_bzero(key, strlen(key));
        free(key);
    }
}

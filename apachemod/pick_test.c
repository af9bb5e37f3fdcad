/*
 * pick_test.c - checks offload_pick.h against testdata/pick-vectors.txt, the vectors the
 * Go package redirect checks too. Usage: pick_test FILE. Exit 0 when every pick agrees.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include "offload_pick.h"

#define MAXH 32

int main(int argc, char **argv)
{
    char line[4096];
    char addrs[MAXH][256];
    const char *ptrs[MAXH];
    int weights[MAXH], down[MAXH], n = 0, checked = 0, failed = 0, lineno = 0, i;
    FILE *f;
    if (argc != 2 || (f = fopen(argv[1], "r")) == NULL) {
        fprintf(stderr, "usage: pick_test FILE\n");
        return 2;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        size_t len = strlen(line);
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }
        if (len == 0 || line[0] == '#') {
            continue;
        }
        if (strncmp(line, "case ", 5) == 0) {
            n = 0;
        } else if (strncmp(line, "host ", 5) == 0) {
            /* [scheme://]host[:port] [weight]: the address is what follows "://" */
            char spec[256];
            int w = 1;
            char *addr;
            if (n == MAXH || sscanf(line + 5, "%255s %d", spec, &w) < 1) {
                fprintf(stderr, "line %d: bad host\n", lineno);
                return 2;
            }
            addr = strstr(spec, "://");
            addr = addr ? addr + 3 : spec;
            snprintf(addrs[n], sizeof(addrs[n]), "%s", addr);
            ptrs[n] = addrs[n];
            weights[n] = w;
            down[n] = 0;
            n++;
        } else if (strncmp(line, "down ", 5) == 0) {
            for (i = 0; i < n; i++) {
                if (strcmp(addrs[i], line + 5) == 0) {
                    down[i] = 1;
                }
            }
        } else if (strncmp(line, "pick ", 5) == 0) {
            char *path = line + 5, *want = strrchr(line, ' ');
            const char *got;
            int k;
            *want++ = '\0';
            k = offload_pick_hash(ptrs, weights, down, n, path);
            got = k < 0 ? "-" : addrs[k];
            checked++;
            if (strcmp(got, want) != 0) {
                printf("line %d: %s picked %s, vectors say %s\n", lineno, path, got, want);
                failed++;
            }
        } else {
            fprintf(stderr, "line %d: unknown line\n", lineno);
            return 2;
        }
    }
    fclose(f);
    {
        /* The rotation skips hosts that are down: up hosts 0 and 2 take turns. */
        int d[3] = {0, 1, 0};
        if (offload_pick_time(d, 3, 0) != 0 || offload_pick_time(d, 3, 1) != 2 ||
            offload_pick_time(d, 3, 2) != 0) {
            printf("offload_pick_time does not rotate over the hosts that are up\n");
            failed++;
        }
    }
    printf("%d picks checked, %d differ\n", checked, failed);
    return failed == 0 && checked > 0 ? 0 : 1;
}

/*
 * offload_pick.h - the offload host choice, shared by mod_offload.c and its tests.
 * Plain C, no APR: rendezvous (highest-random-weight) hashing with 64-bit FNV-1a, a host
 * of weight w counting as w virtual copies. It must pick exactly what the Go package
 * redirect picks (redirect/pick.go); testdata/pick-vectors.txt holds the cases both check.
 */
#ifndef OFFLOAD_PICK_H
#define OFFLOAD_PICK_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define OFFLOAD_FNV_OFFSET 14695981039346656037ULL
#define OFFLOAD_FNV_PRIME 1099511628211ULL

static uint64_t offload_fnv1a64(uint64_t h, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (uint64_t)(unsigned char)s[i];
        h *= OFFLOAD_FNV_PRIME;
    }
    return h;
}

/* The score of one host for path: the highest hash of its weight virtual copies, each
 * hashing "ADDR\nCOPY\nPATH". */
static uint64_t offload_score(const char *addr, int weight, const char *path)
{
    uint64_t best = 0;
    int v;
    for (v = 0; v < weight; v++) {
        char num[16];
        int len = snprintf(num, sizeof(num), "%d", v);
        uint64_t h = OFFLOAD_FNV_OFFSET;
        h = offload_fnv1a64(h, addr, strlen(addr));
        h = offload_fnv1a64(h, "\n", 1);
        h = offload_fnv1a64(h, num, (size_t)len);
        h = offload_fnv1a64(h, "\n", 1);
        h = offload_fnv1a64(h, path, strlen(path));
        if (h > best) {
            best = h;
        }
    }
    return best;
}

/* offload_pick_hash returns the index of the host for path among n hosts (addrs[i] with
 * weights[i]), skipping those with down[i] set; ties go to the first listed; -1 when
 * every host is down. */
static int offload_pick_hash(const char *const *addrs, const int *weights, const int *down,
                             int n, const char *path)
{
    int i, best = -1;
    uint64_t best_score = 0;
    for (i = 0; i < n; i++) {
        uint64_t s;
        if (down != NULL && down[i]) {
            continue;
        }
        s = offload_score(addrs[i], weights[i], path);
        if (best < 0 || s > best_score) {
            best = i;
            best_score = s;
        }
    }
    return best;
}

/* offload_pick_time is the original's rotation: the hosts that are up, one per second. */
static int offload_pick_time(const int *down, int n, long long now)
{
    int i, up = 0, k;
    for (i = 0; i < n; i++) {
        if (down == NULL || !down[i]) {
            up++;
        }
    }
    if (up == 0) {
        return -1;
    }
    k = (int)(now % up);
    for (i = 0; i < n; i++) {
        if (down == NULL || !down[i]) {
            if (k-- == 0) {
                return i;
            }
        }
    }
    return -1;
}

#endif

/* A 3-rank (or N-rank) check that MPI works across bubbles: every rank reports where it
 * runs (host name, address of the interface named by HPK_MPI_IFACE), then an allreduce of
 * a vector large enough to go through the TCP BTL in several segments is checked element
 * by element on every rank. Rank 0 prints one line per rank and "allreduce: ok" at the end.
 * Exit status 1 (through MPI_Abort) on any wrong element. */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COUNT (256 * 1024) /* 1 MiB of ints */
#define WHERE 128

/* The IPv4 address of interface name, or "-" when it has none. */
static void address_of(const char *name, char *out, size_t len)
{
    struct ifaddrs *list, *a;
    snprintf(out, len, "-");
    if (getifaddrs(&list) != 0)
        return;
    for (a = list; a; a = a->ifa_next) {
        if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET && strcmp(a->ifa_name, name) == 0) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, out, len);
            break;
        }
    }
    freeifaddrs(list);
}

int main(int argc, char **argv)
{
    int rank, size, i;
    char host[64], addr[INET_ADDRSTRLEN], where[WHERE];
    const char *iface = getenv("HPK_MPI_IFACE");
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    if (!iface)
        iface = "tap0";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = 0;
    address_of(iface, addr, sizeof addr);
    snprintf(where, sizeof where, "rank %d of %d on %s, %s %s", rank, size, host, iface, addr);
    char *all = rank == 0 ? malloc((size_t)size * WHERE) : NULL;
    MPI_Gather(where, WHERE, MPI_CHAR, all, WHERE, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0)
        for (i = 0; i < size; i++)
            printf("%s\n", all + (size_t)i * WHERE);

    /* Element i of rank r is r + i: the sum over ranks is size * i + size * (size - 1) / 2. */
    long *mine = malloc(COUNT * sizeof *mine), *sum = malloc(COUNT * sizeof *sum);
    for (i = 0; i < COUNT; i++)
        mine[i] = rank + i;
    MPI_Allreduce(mine, sum, COUNT, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    long bad = 0;
    for (i = 0; i < COUNT; i++)
        if (sum[i] != (long)size * i + (long)size * (size - 1) / 2)
            bad++;
    long bad_total = 0;
    MPI_Reduce(&bad, &bad_total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("allreduce: sum of ranks %ld (expected %d), %ld wrong of %ld (%d ranks x %d elements)\n",
               sum[0], size * (size - 1) / 2, bad_total, (long)size * COUNT, size, COUNT);
        if (bad_total != 0) {
            fflush(stdout);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        printf("allreduce: ok\n");
    }
    MPI_Finalize();
    return 0;
}

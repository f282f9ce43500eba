/* MPI ping-pong between ranks 0 and 1, OSU-style: for each message size, latency as half
 * the round trip of blocking send/receive pairs (osu_latency), and bandwidth as a window of
 * non-blocking sends answered by one small acknowledgement (osu_bw). Sizes 1 B to
 * MAX_SIZE (4 MiB); more iterations for small messages, a few warm-up ones not timed.
 *
 *   mpirun -np 2 pingpong [MAX_SIZE]
 *
 * Output, one line per size: "SIZE LATENCY_US BANDWIDTH_MBS" (MB = 10^6 bytes). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 64

int main(int argc, char **argv)
{
    int rank, size;
    long max = 4L << 20;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs exactly 2 ranks, got %d\n", size);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (argc > 1)
        max = atol(argv[1]);
    char *buf = malloc(max), *ack = malloc(4);
    MPI_Request req[WINDOW];
    memset(buf, 'a', max);
    int peer = 1 - rank;
    if (rank == 0)
        printf("# size_bytes latency_us bandwidth_MBs\n");
    for (long n = 1; n <= max; n *= 2) {
        int iters = n <= 8192 ? 1000 : n <= 262144 ? 100 : 20, warm = iters / 10;
        int windows = n <= 8192 ? 100 : n <= 262144 ? 20 : 5;
        double t0 = 0, lat, bw;

        MPI_Barrier(MPI_COMM_WORLD);
        for (int i = 0; i < iters + warm; i++) {
            if (i == warm)
                t0 = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(buf, n, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
                MPI_Recv(buf, n, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, n, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, n, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
            }
        }
        lat = (MPI_Wtime() - t0) * 1e6 / (2.0 * iters);

        MPI_Barrier(MPI_COMM_WORLD);
        for (int w = 0; w < windows + 1; w++) {
            if (w == 1)
                t0 = MPI_Wtime(); /* the first window warms up */
            for (int k = 0; k < WINDOW; k++) {
                if (rank == 0)
                    MPI_Isend(buf, n, MPI_CHAR, peer, 2, MPI_COMM_WORLD, &req[k]);
                else
                    MPI_Irecv(buf, n, MPI_CHAR, peer, 2, MPI_COMM_WORLD, &req[k]);
            }
            MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
            if (rank == 0)
                MPI_Recv(ack, 4, MPI_CHAR, peer, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            else
                MPI_Send(ack, 4, MPI_CHAR, peer, 3, MPI_COMM_WORLD);
        }
        bw = (double)n * WINDOW * windows / (MPI_Wtime() - t0) / 1e6;
        if (rank == 0) {
            printf("%ld %.2f %.2f\n", n, lat, bw);
            fflush(stdout);
        }
    }
    MPI_Finalize();
    return 0;
}

//! How the process was launched: detecting `mpirun` from its environment.

/// The number of processes `mpirun`/`mpiexec` started, read from the launcher's
/// environment (Open MPI's `OMPI_COMM_WORLD_SIZE`, MPICH/Hydra's `PMI_SIZE`); `None`
/// when the process was not started by an MPI launcher. Known without MPI built in, so
/// a binary without the `mpi` feature can refuse instead of training N copies.
pub fn launched_by_mpirun() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|k| std::env::var(k).ok()).and_then(|v| v.trim().parse().ok())
}

/// This process's rank among those `mpirun` started on its node (Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_RANK`, MPICH/Hydra's `MPI_LOCALRANKID`, Slurm's
/// `SLURM_LOCALID`); 0 when not started by a launcher. Picks the GPU of a rank.
pub fn local_rank() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

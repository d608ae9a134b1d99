//! How the process was launched: detecting `mpirun` from its environment.

/// The number of processes `mpirun`/`mpiexec` started, read from the launcher's
/// environment (Open MPI's `OMPI_COMM_WORLD_SIZE`, MPICH/Hydra's `PMI_SIZE`); `None`
/// when the process was not started by an MPI launcher. Known without MPI built in, so
/// a binary without the `mpi` feature can refuse instead of training N copies.
pub fn launched_by_mpirun() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|k| std::env::var(k).ok()).and_then(|v| v.trim().parse().ok())
}

"""Sharding helpers: the mesh from the config and the logical-axis rules table."""
from vision_models.parallel.mesh import AXES, BATCH_AXES, data_parallel_size, make_mesh, mesh_shape
from vision_models.parallel.rules import (DEFAULT_RULES, batch_sharding, bytes_per_device, check_rules, replicated,
                                          shardings, to_global, under_mesh)

__all__ = ['AXES', 'BATCH_AXES', 'DEFAULT_RULES', 'batch_sharding', 'bytes_per_device', 'check_rules',
           'data_parallel_size', 'make_mesh', 'mesh_shape', 'replicated', 'shardings', 'to_global', 'under_mesh']

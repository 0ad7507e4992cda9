"""Stage I, exploration-space expansion: many twin demonstrations from one seed demonstration.

Pipeline for one candidate (a new object / target configuration):

1. :mod:`.keyframes` reads the seed demonstration (a dataset episode: TCP poses from the
   proprioception, the gripper schedule from the actions, the initial object and target
   poses from its configuration) and extracts named keyframes with the grasp
   ``T_grasp = T_obj0^-1 T_tcp`` and the place pose relative to the target.
2. A method builds the new end-effector path (:class:`.path.EEPath`, one pose per 10 Hz step):
   ``affine`` (:mod:`.transfer`: affine map of the translation path between the mapped
   keyframes, slerp of the orientation offsets, the demo's gripper schedule), or ``plan``
   (:mod:`.planning`: IK at the mapped keyframes, OMPL RRTConnect + simplification in joint
   space with collision checks against the twin scene, or MoveIt 2's move_group).
3. :mod:`.execute` runs the path's delta actions in the kinematic twin, renders both cameras,
   checks collisions and task success, and returns a dataset episode tagged ``twin`` with its
   region and cell, or a :class:`.path.Rejection` naming why it was not kept.

:mod:`.generate` runs candidates over ID and OOD cells in parallel workers; :mod:`.replay`
measures how many kept demos succeed when replayed in the sim world (steered to their
recorded targets, and by their actions alone), and replays demonstrations in the twin for
paired real/twin samples.
"""

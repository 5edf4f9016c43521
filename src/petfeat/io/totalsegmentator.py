"""TotalSegmentator's classes per task, and which task(s) a set of class names comes from.

TotalSegmentator writes each task's output either as a folder of one ``<class>.nii.gz`` per class
(empty classes included) or as one multilabel ``--ml`` NIfTI whose ids are the task's label ids.
The class maps below are data taken from TotalSegmentator's ``totalsegmentator/map_to_binary.py``
(``class_map``, plus its derived ``total_v3`` and ``vertebrae_pp_refined``), Copyright Jakob Wasserthal,
licensed under the Apache License 2.0 (https://github.com/wasserth/TotalSegmentator, commit
0e65a448d557382b1e925276212b3bec7f5aff83). Each task is stored as its first label id and its class
names in id order (every task's ids are consecutive).

Several tasks share class names (``liver`` is in ``total``, ``total_mr``, ``total_v1``...), and a user
may write several tasks into one folder (``-o`` twice), so the task of a folder is decided from the
whole set of its names (:func:`identify_task`, :func:`split_by_task`), choosing in :data:`TASK_ORDER`
when the names alone cannot decide.
"""

from __future__ import annotations

from collections.abc import Iterable

#: task -> (first label id, class names in label-id order separated by spaces).
_TASKS: dict[str, tuple[int, str]] = {
    "total_v1": (1,
        "spleen kidney_right kidney_left gallbladder liver stomach aorta inferior_vena_cava "
        "portal_vein_and_splenic_vein pancreas adrenal_gland_right adrenal_gland_left lung_upper_lobe_left "
        "lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right vertebrae_L5 "
        "vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 "
        "vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5 vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 "
        "vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 vertebrae_C3 vertebrae_C2 vertebrae_C1 esophagus trachea "
        "heart_myocardium heart_atrium_left heart_ventricle_left heart_atrium_right heart_ventricle_right "
        "pulmonary_artery brain iliac_artery_left iliac_artery_right iliac_vena_left iliac_vena_right small_bowel "
        "duodenum colon rib_left_1 rib_left_2 rib_left_3 rib_left_4 rib_left_5 rib_left_6 rib_left_7 rib_left_8 "
        "rib_left_9 rib_left_10 rib_left_11 rib_left_12 rib_right_1 rib_right_2 rib_right_3 rib_right_4 rib_right_5 "
        "rib_right_6 rib_right_7 rib_right_8 rib_right_9 rib_right_10 rib_right_11 rib_right_12 humerus_left "
        "humerus_right scapula_left scapula_right clavicula_left clavicula_right femur_left femur_right hip_left "
        "hip_right sacrum face gluteus_maximus_left gluteus_maximus_right gluteus_medius_left gluteus_medius_right "
        "gluteus_minimus_left gluteus_minimus_right autochthon_left autochthon_right iliopsoas_left iliopsoas_right "
        "urinary_bladder"),
    "total": (1,
        "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
        "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
        "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
        "kidney_cyst_right sacrum vertebrae_S1 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 "
        "vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5 "
        "vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 "
        "vertebrae_C3 vertebrae_C2 vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk "
        "subclavian_artery_right subclavian_artery_left common_carotid_artery_right common_carotid_artery_left "
        "brachiocephalic_vein_left brachiocephalic_vein_right atrial_appendage_left superior_vena_cava "
        "inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left "
        "iliac_vena_right humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right "
        "femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right "
        "gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left "
        "autochthon_right iliopsoas_left iliopsoas_right brain skull rib_left_1 rib_left_2 rib_left_3 rib_left_4 "
        "rib_left_5 rib_left_6 rib_left_7 rib_left_8 rib_left_9 rib_left_10 rib_left_11 rib_left_12 rib_right_1 "
        "rib_right_2 rib_right_3 rib_right_4 rib_right_5 rib_right_6 rib_right_7 rib_right_8 rib_right_9 rib_right_10 "
        "rib_right_11 rib_right_12 sternum costal_cartilages"),
    "total_mr": (1,
        "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
        "lung_left lung_right esophagus small_bowel duodenum colon urinary_bladder prostate sacrum vertebrae "
        "intervertebral_discs spinal_cord heart aorta inferior_vena_cava portal_vein_and_splenic_vein "
        "iliac_artery_left iliac_artery_right iliac_vena_left iliac_vena_right humerus_left humerus_right scapula_left "
        "scapula_right clavicula_left clavicula_right femur_left femur_right hip_left hip_right gluteus_maximus_left "
        "gluteus_maximus_right gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right "
        "autochthon_left autochthon_right iliopsoas_left iliopsoas_right brain"),
    "total_highres_test": (1,
        "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
        "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
        "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
        "kidney_cyst_right"),
    "lung_vessels": (1, "lung_airways lung_airways_wall lung_arteries lung_veins"),
    "lung_vessels_LEGACY": (1, "lung_vessels lung_trachea_bronchia"),
    "oculomotor_muscles": (1,
        "skull eyeball_right lateral_rectus_muscle_right superior_oblique_muscle_right "
        "levator_palpebrae_superioris_right superior_rectus_muscle_right medial_rectus_muscle_left "
        "inferior_oblique_muscle_right inferior_rectus_muscle_right optic_nerve_left eyeball_left "
        "lateral_rectus_muscle_left superior_oblique_muscle_left levator_palpebrae_superioris_left "
        "superior_rectus_muscle_left medial_rectus_muscle_right inferior_oblique_muscle_left "
        "inferior_rectus_muscle_left optic_nerve_right"),
    "covid": (1, "lung_covid_infiltrate"),
    "cerebral_bleed": (1, "intracerebral_hemorrhage"),
    "hip_implant": (1, "hip_implant"),
    "coronary_arteries": (1, "coronary_arteries"),
    "coronary_arteries_LEGACY": (1, "coronary_arteries"),
    "body": (1, "body_trunc body_extremities"),
    "body_mr": (1, "body_trunc body_extremities"),
    "vertebrae_mr": (1,
        "sacrum vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 vertebrae_T12 vertebrae_T11 "
        "vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5 vertebrae_T4 vertebrae_T3 "
        "vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 vertebrae_C3 vertebrae_C2 "
        "vertebrae_C1"),
    "pleural_pericard_effusion": (1, "lung_pleural pleural_effusion pericardial_effusion"),
    "liver_vessels": (1, "liver_vessels liver_tumor"),
    "vertebrae_body": (1, "vertebrae_body intervertebral_discs"),
    "vertebrae_pp": (1,
        "vertebrae_C1 vertebrae_C2 vertebrae_C3 vertebrae_C4 vertebrae_C5 vertebrae_C6 vertebrae_C7 vertebrae_T1 "
        "vertebrae_T2 vertebrae_T3 vertebrae_T4 vertebrae_T5 vertebrae_T6 vertebrae_T7 vertebrae_T8 vertebrae_T9 "
        "vertebrae_T10 vertebrae_T11 vertebrae_T12 vertebrae_L1 vertebrae_L2 vertebrae_L3 vertebrae_L4 vertebrae_L5"),
    "heartchambers_highres": (1,
        "heart_myocardium heart_atrium_left heart_ventricle_left heart_atrium_right heart_ventricle_right aorta "
        "pulmonary_artery"),
    "appendicular_bones": (1,
        "patella tibia fibula tarsal metatarsal phalanges_feet ulna radius carpal metacarpal phalanges_hand"),
    "appendicular_bones_mr": (1, "patella tibia fibula tarsal metatarsal phalanges_feet ulna radius"),
    "appendicular_bones_auxiliary": (12, "humerus femur liver spleen"),
    "tissue_types": (1, "subcutaneous_fat torso_fat skeletal_muscle"),
    "tissue_types_mr": (1, "subcutaneous_fat torso_fat skeletal_muscle"),
    "tissue_4_types": (1, "subcutaneous_fat torso_fat skeletal_muscle intermuscular_fat"),
    "face": (1, "face"),
    "face_mr": (1, "face"),
    "face_mr_auxiliary": (2, "brain liver"),
    "brain_structures": (1,
        "brainstem subarachnoid_space venous_sinuses septum_pellucidum cerebellum caudate_nucleus lentiform_nucleus "
        "insular_cortex internal_capsule ventricle central_sulcus frontal_lobe parietal_lobe occipital_lobe "
        "temporal_lobe thalamus"),
    "head_glands_cavities": (1,
        "eye_left eye_right eye_lens_left eye_lens_right optic_nerve_left optic_nerve_right parotid_gland_left "
        "parotid_gland_right submandibular_gland_right submandibular_gland_left nasopharynx oropharynx hypopharynx "
        "nasal_cavity_right nasal_cavity_left auditory_canal_right auditory_canal_left soft_palate hard_palate"),
    "headneck_bones_vessels": (1,
        "larynx_air thyroid_cartilage hyoid cricoid_cartilage zygomatic_arch_right zygomatic_arch_left "
        "styloid_process_right styloid_process_left internal_carotid_artery_right internal_carotid_artery_left "
        "internal_jugular_vein_right internal_jugular_vein_left"),
    "head_muscles": (1,
        "masseter_right masseter_left temporalis_right temporalis_left lateral_pterygoid_right lateral_pterygoid_left "
        "medial_pterygoid_right medial_pterygoid_left tongue digastric_right digastric_left"),
    "headneck_muscles": (1,
        "sternocleidomastoid_right sternocleidomastoid_left superior_pharyngeal_constrictor "
        "middle_pharyngeal_constrictor inferior_pharyngeal_constrictor trapezius_right trapezius_left platysma_right "
        "platysma_left levator_scapulae_right levator_scapulae_left anterior_scalene_right anterior_scalene_left "
        "middle_scalene_right middle_scalene_left posterior_scalene_right posterior_scalene_left sterno_thyroid_right "
        "sterno_thyroid_left thyrohyoid_right thyrohyoid_left prevertebral_right prevertebral_left"),
    "thigh_shoulder_muscles": (1,
        "quadriceps_femoris_left quadriceps_femoris_right thigh_medial_compartment_left thigh_medial_compartment_right "
        "thigh_posterior_compartment_left thigh_posterior_compartment_right sartorius_left sartorius_right deltoid "
        "supraspinatus infraspinatus subscapularis coracobrachial trapezius pectoralis_minor serratus_anterior "
        "teres_major triceps_brachii"),
    "thigh_shoulder_muscles_mr": (1,
        "quadriceps_femoris_left quadriceps_femoris_right thigh_medial_compartment_left thigh_medial_compartment_right "
        "thigh_posterior_compartment_left thigh_posterior_compartment_right sartorius_left sartorius_right deltoid "
        "supraspinatus infraspinatus subscapularis coracobrachial trapezius pectoralis_minor serratus_anterior "
        "teres_major triceps_brachii"),
    "lung_nodules": (1, "lung lung_nodules"),
    "kidney_cysts": (1, "kidney_cyst_left kidney_cyst_right"),
    "kidney_cysts_auxiliary": (3, "kidney_left kidney_right"),
    "breasts": (1, "breast"),
    "ventricle_parts": (1,
        "ventricle_frontal_horn_left ventricle_occipital_horn_left ventricle_body_left ventricle_temporal_horn_left "
        "ventricle_trigone_left ventricle_frontal_horn_right ventricle_occipital_horn_right ventricle_body_right "
        "ventricle_temporal_horn_right ventricle_trigone_right third_ventricle fourth_ventricle"),
    "aortic_sinuses": (1, "left_ventricular_outflow_tract right_coronary_cusp left_coronary_cusp non_coronary_cusp"),
    "renal_arteries": (1, "celiac_trunk superior_mesenteric_artery renal_arteries"),
    "renal_arteries_auxiliary": (4, "aorta"),
    "aorta_annulus": (1, "annulus_proper sinotubular_junction"),
    "aortic_dissection": (1, "aorta_true_lumen aorta_false_lumen"),
    "pulmonary_artery_landmarks": (1,
        "annulus sinotubular_junction pul_annulus pul_sinotubular_junction pul_bifurcation pul_left_start "
        "pul_right_start"),
    "liver_segments": (1,
        "liver_segment_1 liver_segment_2 liver_segment_3 liver_segment_4 liver_segment_5 liver_segment_6 "
        "liver_segment_7 liver_segment_8"),
    "liver_segments_mr": (1,
        "liver_segment_1 liver_segment_2 liver_segment_3 liver_segment_4 liver_segment_5 liver_segment_6 "
        "liver_segment_7 liver_segment_8"),
    "liver_lesions": (1, "liver_lesions"),
    "liver_lesions_mr": (1, "liver_lesions"),
    "craniofacial_structures": (1, "mandible teeth_lower skull head sinus_maxillary sinus_frontal teeth_upper"),
    "abdominal_muscles": (1,
        "pectoralis_major_right pectoralis_major_left rectus_abdominis_right rectus_abdominis_left "
        "serratus_anterior_right serratus_anterior_left latissimus_dorsi_right latissimus_dorsi_left trapezius_right "
        "trapezius_left external_oblique_right external_oblique_left internal_oblique_right internal_oblique_left "
        "erector_spinae_right erector_spinae_left transversospinalis_right transversospinalis_left psoas_major_right "
        "psoas_major_left quadratus_lumborum_right quadratus_lumborum_left"),
    "teeth": (1,
        "lower_jawbone upper_jawbone left_inferior_alveolar_canal right_inferior_alveolar_canal left_maxillary_sinus "
        "right_maxillary_sinus pharynx bridge crown implant upper_right_central_incisor_fdi11 "
        "upper_right_lateral_incisor_fdi12 upper_right_canine_fdi13 upper_right_first_premolar_fdi14 "
        "upper_right_second_premolar_fdi15 upper_right_first_molar_fdi16 upper_right_second_molar_fdi17 "
        "upper_right_third_molar_fdi18 upper_left_central_incisor_fdi21 upper_left_lateral_incisor_fdi22 "
        "upper_left_canine_fdi23 upper_left_first_premolar_fdi24 upper_left_second_premolar_fdi25 "
        "upper_left_first_molar_fdi26 upper_left_second_molar_fdi27 upper_left_third_molar_fdi28 "
        "lower_left_central_incisor_fdi31 lower_left_lateral_incisor_fdi32 lower_left_canine_fdi33 "
        "lower_left_first_premolar_fdi34 lower_left_second_premolar_fdi35 lower_left_first_molar_fdi36 "
        "lower_left_second_molar_fdi37 lower_left_third_molar_fdi38 lower_right_central_incisor_fdi41 "
        "lower_right_lateral_incisor_fdi42 lower_right_canine_fdi43 lower_right_first_premolar_fdi44 "
        "lower_right_second_premolar_fdi45 lower_right_first_molar_fdi46 lower_right_second_molar_fdi47 "
        "lower_right_third_molar_fdi48 left_mandibular_incisive_canal_fdi103 right_mandibular_incisive_canal_fdi104 "
        "lingual_canal upper_right_central_incisor_pulp_fdi111 upper_right_lateral_incisor_pulp_fdi112 "
        "upper_right_canine_pulp_fdi113 upper_right_first_premolar_pulp_fdi114 upper_right_second_premolar_pulp_fdi115 "
        "upper_right_first_molar_pulp_fdi116 upper_right_second_molar_pulp_fdi117 upper_right_third_molar_pulp_fdi118 "
        "upper_left_central_incisor_pulp_fdi121 upper_left_lateral_incisor_pulp_fdi122 upper_left_canine_pulp_fdi123 "
        "upper_left_first_premolar_pulp_fdi124 upper_left_second_premolar_pulp_fdi125 "
        "upper_left_first_molar_pulp_fdi126 upper_left_second_molar_pulp_fdi127 upper_left_third_molar_pulp_fdi128 "
        "lower_left_central_incisor_pulp_fdi131 lower_left_lateral_incisor_pulp_fdi132 lower_left_canine_pulp_fdi133 "
        "lower_left_first_premolar_pulp_fdi134 lower_left_second_premolar_pulp_fdi135 "
        "lower_left_first_molar_pulp_fdi136 lower_left_second_molar_pulp_fdi137 lower_left_third_molar_pulp_fdi138 "
        "lower_right_central_incisor_pulp_fdi141 lower_right_lateral_incisor_pulp_fdi142 "
        "lower_right_canine_pulp_fdi143 lower_right_first_premolar_pulp_fdi144 lower_right_second_premolar_pulp_fdi145 "
        "lower_right_first_molar_pulp_fdi146 lower_right_second_molar_pulp_fdi147 lower_right_third_molar_pulp_fdi148"),
    "trunk_cavities": (1, "abdominal_cavity thoracic_cavity pericardium mediastinum"),
    "brain_aneurysm": (1, "brain_aneurysm"),
    "test": (1, "carpal"),
    "total_v3": (1,
        "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
        "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
        "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
        "kidney_cyst_right sacrum vertebrae_L6 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 "
        "vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5 "
        "vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 "
        "vertebrae_C3 vertebrae_C2 vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk "
        "subclavian_artery_right subclavian_artery_left common_carotid_artery_right common_carotid_artery_left "
        "brachiocephalic_vein_left brachiocephalic_vein_right atrial_appendage_left superior_vena_cava "
        "inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left "
        "iliac_vena_right humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right "
        "femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right "
        "gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left "
        "autochthon_right iliopsoas_left iliopsoas_right brain skull rib_left_1 rib_left_2 rib_left_3 rib_left_4 "
        "rib_left_5 rib_left_6 rib_left_7 rib_left_8 rib_left_9 rib_left_10 rib_left_11 rib_left_12 rib_right_1 "
        "rib_right_2 rib_right_3 rib_right_4 rib_right_5 rib_right_6 rib_right_7 rib_right_8 rib_right_9 rib_right_10 "
        "rib_right_11 rib_right_12 sternum costal_cartilages"),
    "vertebrae_pp_refined": (1,
        "vertebrae_C1 vertebrae_C2 vertebrae_C3 vertebrae_C4 vertebrae_C5 vertebrae_C6 vertebrae_C7 vertebrae_T1 "
        "vertebrae_T2 vertebrae_T3 vertebrae_T4 vertebrae_T5 vertebrae_T6 vertebrae_T7 vertebrae_T8 vertebrae_T9 "
        "vertebrae_T10 vertebrae_T11 vertebrae_T12 vertebrae_L1 vertebrae_L2 vertebrae_L3 vertebrae_L4 vertebrae_L5"),
}

#: Task -> class names in label-id order.
TASK_CLASSES: dict[str, tuple[str, ...]] = {task: tuple(names.split()) for task, (_, names) in _TASKS.items()}
#: Task -> {label id: class name} (the ids of the task's ``--ml`` output).
TASK_LABELS: dict[str, dict[int, str]] = {
    task: dict(enumerate(TASK_CLASSES[task], start=first)) for task, (first, _) in _TASKS.items()}

_LAST = ("total_v1", "total_highres_test", "test")
#: Tie-break order between tasks that explain a set of names equally well: ``total`` first, then
#: ``total_mr``, then the other tasks in TotalSegmentator's own order (CT before MR variants), with
#: the superseded, legacy, auxiliary and test maps last.
TASK_ORDER: tuple[str, ...] = (
    ("total", "total_mr")
    + tuple(t for t in TASK_CLASSES if t not in ("total", "total_mr") + _LAST
            and not t.endswith(("_LEGACY", "_auxiliary")))
    + tuple(t for t in TASK_CLASSES if t.endswith("_LEGACY"))
    + tuple(t for t in TASK_CLASSES if t.endswith("_auxiliary"))
    + _LAST
)
#: Key of :func:`split_by_task`'s result for names that no task knows (user-made classes).
UNKNOWN = ""

_SETS = {task: frozenset(names) for task, names in TASK_CLASSES.items()}
_RANK = {task: i for i, task in enumerate(TASK_ORDER)}


def _best_task(names: frozenset[str]) -> tuple[str, frozenset[str]] | None:
    """The task that explains most of ``names`` and the names it explains; None when no task knows any.

    Ties go to a task all of whose classes are present, then to the earlier task in :data:`TASK_ORDER`.
    """
    best, best_key = None, None
    for task in TASK_ORDER:
        known = names & _SETS[task]
        if not known:
            continue
        key = (len(known), _SETS[task] <= names, -_RANK[task])
        if best_key is None or key > best_key:
            best, best_key = (task, known), key
    return best


def identify_task(class_names: Iterable[str]) -> str | None:
    """The TotalSegmentator task whose classes include every one of ``class_names``, or None.

    A complete output (every class of the task present, as TotalSegmentator writes them, empty ones
    included) is recognised even when its names are a subset of a larger task (``vertebrae_mr`` in
    ``total``); a partial one (``--roi_subset``) goes to the first containing task in
    :data:`TASK_ORDER` (``liver`` alone is ``total``). Names of several tasks merged in one folder, or
    names no task knows, give None: use :func:`split_by_task`.

    Parameters
    ----------
    class_names
        Class names, e.g. a folder's file names without ``.nii.gz``.
    """
    names = frozenset(class_names)
    if not names:
        return None
    best = _best_task(names)
    return best[0] if best is not None and best[1] == names else None


def split_by_task(class_names: Iterable[str]) -> dict[str, list[str]]:
    """Which of ``class_names`` belong to which task, for a folder that holds several tasks' outputs.

    Tasks are taken greedily: the task that knows most of the names not yet assigned (ties: a task
    whose classes are all present, then :data:`TASK_ORDER`) takes every such name, and so on. A name
    that several present tasks share therefore goes to the first task taken (``total`` before
    ``head_glands_cavities``). Names no task knows are listed under :data:`UNKNOWN` (``""``).

    Returns
    -------
    dict
        task -> its names in the order given, tasks in the order taken (:data:`UNKNOWN` last).
    """
    ordered = list(dict.fromkeys(class_names))
    left = frozenset(ordered)
    out: dict[str, list[str]] = {}
    while left:
        best = _best_task(left)
        if best is None:
            break
        task, known = best
        out[task] = [n for n in ordered if n in known]
        left = left - known
    if left:
        out[UNKNOWN] = [n for n in ordered if n in left]
    return out

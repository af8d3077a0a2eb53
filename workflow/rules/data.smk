# One job per dataset: its source (generated, D4RL HDF5 or Minari) -> data/processed/<dataset key>/
# (the key is the name, plus the generation settings of a generated dataset).


rule prepare_dataset:
    message:
        "prepare dataset {wildcards.dataset}"
    input:
        dataset_source,
    output:
        episodes=dataset_path("episodes.npz"),
        metadata=dataset_path("metadata.json"),
    params:
        name=generation("dataset"),
        steps=generation("dataset_steps"),
        action_noise=generation("dataset_action_noise"),
        seed=generation("dataset_seed"),
        data_dir=data_dir_of("metadata"),
    log:
        log_path("prepare_dataset", "dataset"),
    shell:
        "{PYTHON} -m diffuser prepare --dataset {params.name:q} --steps {params.steps}"
        " --action-noise {params.action_noise} --seed {params.seed} --data-dir {params.data_dir} > {log:q} 2>&1"


rule all_datasets:
    message:
        "every dataset of {EXP} is ready"
    input:
        all_dataset_files(),

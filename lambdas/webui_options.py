"""SD WebUI's options (``/sdapi/v1/options``): WebUI 1.10's whole document, and the few that change how a caller's
later requests run, kept per caller.

WebUI's options are one process's settings: a client reads them (``send_seed``, ``samples_format``...) and fails
with a KeyError on a key it expects, and switches models by POSTing ``sd_model_checkpoint`` (the AWS sample's queue
agent does, before each task). spotgen serves every caller at once, so what WebUI keeps globally is kept per
caller (``callers/{caller}.options.json``, next to its latest-job pointer): ``APPLIED`` are merged into that
caller's later txt2img/img2img bodies as ``override_settings`` (the body's own win, as WebUI's override_settings
win over its options), so they are checked and mapped by the same rules as there. ``REFUSED`` change the images in
ways spotgen does not run: a value other than the document's is a 400 naming the option. Every other option of
the document is accepted and ignored (saving paths, the UI, training, previews: nothing spotgen has).
"""

from __future__ import annotations

from typing import Any

#: WebUI's options that a caller may set and that its later generations apply (``override_settings``).
APPLIED = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "eta_noise_seed_delta", "samples_format",
           "jpeg_quality", "webp_lossless")
#: Options that change the images where spotgen has no such setting: only the document's value is accepted.
REFUSED = ("face_restoration", "face_restoration_model", "code_former_weight", "tiling", "sd_unet", "randn_source",
           "emphasis", "enable_quantization", "upcast_attn", "initial_noise_multiplier",
           "img2img_extra_noise", "img2img_color_correction", "inpainting_mask_weight", "sd_vae_encode_method",
           "sd_vae_decode_method", "eta_ddim", "eta_ancestral", "s_churn", "s_tmin", "s_tmax", "s_noise",
           "sigma_min", "sigma_max", "rho", "always_discard_next_to_last_sigma",
           "sgm_noise_multiplier", "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final",
           "sd_hypernetwork", "token_merging_ratio", "token_merging_ratio_img2img", "token_merging_ratio_hr",
           "s_min_uncond", "pad_cond_uncond", "sd_noise_schedule", "use_old_emphasis_implementation",
           "use_old_karras_scheduler_sigmas", "use_old_scheduling", "sdxl_crop_top", "sdxl_crop_left",
           "sdxl_refiner_low_aesthetic_score", "sdxl_refiner_high_aesthetic_score", "img2img_background_color",
           "sdxl_clip_l_skip", "sd3_enable_t5", "s_min_uncond_all", "pad_cond_uncond_v0", "use_downcasted_alpha_bar",
           "refiner_switch_by_sample_steps", "skip_early_cond", "beta_dist_alpha", "beta_dist_beta", "fp8_storage",
           "overlay_inpaint")


def _keys(value: Any, names: str) -> dict[str, Any]:
    return dict.fromkeys(names.split(), value)


#: WebUI 1.10's options document at its defaults (``modules/shared_options.py`` and the built-in Lora extension's),
#: except where spotgen differs: no face restorer, no Real-ESRGAN or DAT models of WebUI's, no folders, no UI; the
#: settings page's explanations (HTML) are empty. The keys were checked against a 1.10 document as a running server
#: answers it (without the Forge fork's own ``forge_*`` keys); keys that 1.8 removed (``enable_emphasis``,
#: ``k_sched_type``...) are not in it. ``document`` fills in the model.
DEFAULTS: dict[str, Any] = {
    **_keys(True, "samples_save save_images_add_number grid_save grid_only_if_multiple export_for_4chan "
                  "use_original_name_batch save_selected_only save_to_dirs grid_save_to_dirs "
                  "sd_checkpoints_keep_in_cpu "
                  "enable_batch_seeds list_hidden_files hide_ldm_prints api_enable_requests api_forbid_local_requests "
                  "save_training_settings_to_txt sd_vae_overrides_per_model_preferences auto_vae_precision "
                  "persistent_cond_cache batch_cond_uncond deepbooru_sort_alpha deepbooru_use_spaces deepbooru_escape "
                  "extra_networks_show_hidden_directories extra_networks_card_show_desc "
                  "textual_inversion_add_hashes_to_infotext keyedit_move return_grid js_modal_lightbox "
                  "js_modal_lightbox_initially_zoomed samplers_in_dropdown dimensions_and_batch_together "
                  "gradio_themes_cache show_progress_in_title send_seed send_size enable_pnginfo "
                  "add_model_name_to_info "
                  "add_model_hash_to_info add_vae_name_to_info add_vae_hash_to_info add_version_to_infotext "
                  "disable_weights_auto_swap show_progressbar live_previews_enable show_progress_grid "
                  "uni_pc_lower_order_final multiple_tqdm show_gradio_deprecation_warnings notification_audio "
                  "save_write_log_csv enable_upscale_progressbar profiling_record_shapes profiling_profile_memory "
                  "profiling_with_stack img2img_inpaint_mask_high_contrast overlay_inpaint auto_backcompat "
                  "extra_networks_tree_view_default_enabled include_styles_into_token_counters "
                  "interrupt_after_current enable_prompt_comments lora_add_hashes_to_infotext "
                  "lora_bundled_ti_to_infotext"),
    **_keys(False, "grid_extended_filename grid_prevent_empty_spots save_images_before_face_restoration "
                   "save_images_before_highres_fix save_images_before_color_correction save_mask save_mask_composite "
                   "webp_lossless use_upscaler_name_as_suffix save_init_img clean_temp_dir_at_start "
                   "save_incomplete_images use_save_to_dirs_for_ui face_restoration face_restoration_unload "
                   "enable_console_prompts show_warnings samples_log_stdout print_hypernet_extra "
                   "disable_mmap_load_safetensors dump_stacks_on_signal unload_models_when_training pin_memory "
                   "save_optimizer_state training_xattention_optimizations training_enable_tensorboard "
                   "training_tensorboard_save_images enable_quantization upcast_attn tiling img2img_color_correction "
                   "img2img_fix_steps return_mask return_mask_composite pad_cond_uncond "
                   "use_old_emphasis_implementation "
                   "use_old_karras_scheduler_sigmas no_dpmpp_sde_batch_determinism use_old_hires_fix_width_height "
                   "hires_fix_use_firstpass_conds use_old_scheduling "
                   "interrogate_keep_models_in_memory interrogate_return_ranks extra_networks_dir_button_function "
                   "textual_inversion_print_at_load disable_token_counters do_not_show_images "
                   "js_modal_lightbox_gamepad "
                   "compact_prompt_box sd_checkpoint_dropdown_use_short hires_fix_show_sampler hires_fix_show_prompts "
                   "txt2img_settings_accordion img2img_settings_accordion add_user_name_to_info save_txt "
                   "live_preview_allow_lowvram_full live_preview_fast_interrupt js_live_preview_in_modal_lightbox "
                   "always_discard_next_to_last_sigma sgm_noise_multiplier set_scale_by_when_changing_upscaler "
                   "profiling_enable sdxl_clip_l_skip sd3_enable_t5 auto_vae_precision_bfloat16 img2img_autosize "
                   "img2img_batch_use_original_name s_min_uncond_all pad_cond_uncond_v0 cache_fp16_weight "
                   "use_downcasted_alpha_bar refiner_switch_by_sample_steps "
                   "extra_networks_card_description_is_html hires_button_gallery_insert "
                   "enable_reloading_ui_scripts extra_options_accordion lora_show_all "
                   "lora_not_found_warning_console lora_not_found_gradio_warning"),
    **_keys(True, "prevent_screen_sleep_during_generation"), "sd_webui_modal_lightbox_toolbar_opacity": 0.9,
    **_keys("", "samples_filename_pattern grid_zip_filename_pattern font temp_dir api_useragent "
                "dataset_filename_word_regex outdir_samples outdir_grids ui_extra_networks_tab_reorder gallery_height "
                "deepbooru_filter_tags restore_config_state_file sd_checkpoint_hash profiling_explanation "
                "sd_vae_explanation infotext_explanation settings_in_ui"),
    **_keys(0.0, "img2img_extra_noise s_min_uncond token_merging_ratio token_merging_ratio_img2img "
                 "token_merging_ratio_hr eta_ddim s_churn s_tmin s_tmax sigma_min sigma_max rho skip_early_cond"),
    **_keys([], "interrogate_clip_skip_categories ui_tab_order hidden_tabs ui_reorder_list infotext_skip_pasting "
                "hide_samplers postprocessing_enable_in_main_ui postprocessing_operation_order disabled_extensions "
                "realesrgan_enabled_models dat_enabled_models postprocessing_disable_in_extras extra_options_txt2img "
                "extra_options_img2img lora_hide_unknown_for_versions"),
    "samples_format": "png", "save_images_replace_action": "Replace", "grid_format": "png", "n_rows": -1,
    "grid_text_active_color": "#000000", "grid_text_inactive_color": "#999999", "grid_background_color": "#ffffff",
    "jpeg_quality": 80, "img_downscale_threshold": 4.0, "target_side_length": 4000, "img_max_size_mp": 200,
    "notification_volume": 100, "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images", "outdir_extras_samples": "outputs/extras-images",
    "outdir_txt2img_grids": "outputs/txt2img-grids", "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images", "outdir_init_images": "outputs/init-images", "directories_filename_pattern": "[date]",
    "directories_max_prompt_words": 8, "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8, "upscaler_for_img2img": None,
    "face_restoration_model": None, "code_former_weight": 0.5, "auto_launch_browser": "Disable",
    "memmon_poll_rate": 8, "dataset_filename_join_string": " ", "training_image_repeats_per_epoch": 1,
    "training_write_csv_every": 500, "training_tensorboard_flush_every": 120, "sd_model_checkpoint": None,
    "sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0, "sd_unet": "Automatic", "emphasis": "Original",
    "comma_padding_backtrack": 20, "CLIP_stop_at_last_layers": 1, "randn_source": "GPU",
    "hires_fix_refiner_pass": "second pass", "sd_noise_schedule": "Default", "sdxl_crop_top": 0, "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5, "sdxl_refiner_high_aesthetic_score": 6.0, "sd_vae_checkpoint_cache": 0,
    "sd_vae": "Automatic", "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_background_color": "#ffffff",
    "img2img_sketch_default_brush_color": "#ffffff",
    "img2img_inpaint_mask_brush_color": "#ffffff", "img2img_inpaint_sketch_default_brush_color": "#ffffff",
    "img2img_batch_show_results_limit": 32, "cross_attention_optimization": "Automatic",
    "interrogate_clip_num_beams": 1, "interrogate_clip_min_length": 24, "interrogate_clip_max_length": 48,
    "interrogate_clip_dict_limit": 1500, "interrogate_deepbooru_score_threshold": 0.5,
    "extra_networks_hidden_models": "When searched", "extra_networks_default_multiplier": 1.0,
    "extra_networks_card_width": 0, "extra_networks_card_height": 0, "extra_networks_card_text_scale": 1.0,
    "extra_networks_card_order_field": "Path", "extra_networks_card_order": "Ascending",
    "extra_networks_add_text_separator": " ", "sd_hypernetwork": "None", "keyedit_precision_attention": 0.1,
    "keyedit_precision_extra": 0.05, "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
    "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"], "js_modal_lightbox_gamepad_repeat": 250,
    "localization": "None", "quicksettings_list": ["sd_model_checkpoint"], "gradio_theme": "Default",
    "infotext_styles": "Apply if any", "live_previews_image_format": "png", "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN", "live_preview_content": "Prompt", "live_preview_refresh_period": 1000,
    "eta_ancestral": 1.0, "ddim_discretize": "uniform", "s_noise": 1.0,
    "eta_noise_seed_delta": 0, "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3,
    "upscaling_max_images_in_cache": 5, "postprocessing_existing_caption_action": "Ignore",
    "disable_all_extensions": "none", "DAT_tile": 192, "DAT_tile_overlap": 8, "profiling_activities": ["CPU"],
    "profiling_filename": "trace.json", "img2img_inpaint_mask_scribble_alpha": 75, "fp8_storage": "Disable",
    "extra_networks_tree_view_style": "Dirs", "extra_networks_tree_view_default_width": 180,
    "sd_webui_modal_lightbox_icon_opacity": 1.0, "open_dir_button_choice": "Subdirectory",
    "tabs_without_quick_settings_bar": ["Spaces"], "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6,
    "extra_options_cols": 1, "sd_lora": "None", "lora_preferred_name": "Alias from file", "lora_in_memory_limit": 0,
}


def document(model_title: str | None, kept: dict[str, Any]) -> dict[str, Any]:
    """The options as a caller reads them: WebUI's document, the ``/sdapi/v1`` runtime's model, and what the
    caller set (``kept``)."""
    return {**DEFAULTS, "sd_model_checkpoint": model_title, **kept}


def unchangeable(key: str, value: Any) -> str | None:
    """Why ``key: value`` is refused, or None when it is accepted (applied or ignored)."""
    if key not in DEFAULTS:
        return "not an option of SD WebUI 1.10"
    if key in REFUSED and value != DEFAULTS[key]:
        return (f"spotgen does not run this setting (only {DEFAULTS[key]!r}); it changes the images in a way "
                "spotgen has no equivalent for")
    return None

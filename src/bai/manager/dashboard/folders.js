// Storage folders. Filled in once the manager serves /folders (issue 14).
import { h, replace } from './ui.js';

export async function foldersView(root) {
  replace(root, h('h1', {}, 'Storage folders'),
    h('p', { class: 'muted' }, 'This manager does not serve storage folders yet; use backend.ai vfolder once it does.'));
}

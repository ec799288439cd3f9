import { NodeApiError } from 'n8n-workflow';
import { describe, expect, inject, it } from 'vitest';
import { searchRoles } from '../nodes/RoleInjector/methods/listSearch';
import { roleVariables } from '../nodes/RoleInjector/methods/loadOptions';
import { RoleInjector } from '../nodes/RoleInjector/RoleInjector.node';
import { loadOptionsContext } from './context';
import { API_KEY } from './globalSetup';

const context = () => loadOptionsContext({ url: inject('workerUrl') });

describe('role list', () => {
	it("is the search method of the role parameter's list mode", () => {
		const node = new RoleInjector();
		const role = node.description.properties.find((property) => property.name === 'role');
		const list = role?.modes?.find((mode) => mode.name === 'list');

		expect(list?.typeOptions?.searchListMethod).toBe('searchRoles');
		expect(node.methods.listSearch.searchRoles).toBe(searchRoles);
	});

	it('lists every role with its size right after its name, then its description', async () => {
		// n8n cuts an entry off at the list's width: what comes first is what is seen.
		const { results } = await searchRoles.call(context());

		expect(results.map((result) => result.value)).toEqual(['poet', 'tester']);
		expect(results[1].name).toMatch(/^tester · [\d,]+ tokens — Test persona for the n8n node$/);
	});

	it('keeps the roles whose name or description contains the search text', async () => {
		const byDescription = await searchRoles.call(context(), 'POEMS');
		const byName = await searchRoles.call(context(), 'test');
		const none = await searchRoles.call(context(), 'nothing like this');

		expect(byDescription.results.map((result) => result.value)).toEqual(['poet']);
		expect(byName.results.map((result) => result.value)).toEqual(['tester']);
		expect(none.results).toEqual([]);
	});

	it('uses the API key', async () => {
		const url = inject('securedWorkerUrl');
		const { results } = await searchRoles.call(loadOptionsContext({ url, apiKey: API_KEY }));
		const error = await searchRoles
			.call(loadOptionsContext({ url, apiKey: 'wrong-key' }))
			.catch((e: unknown) => e);

		expect(results).toHaveLength(2);
		expect(error).toBeInstanceOf(NodeApiError);
		expect((error as NodeApiError).httpCode).toBe('401');
	});

	it('names the URL it cannot reach', async () => {
		const url = inject('closedUrl');
		const error = await searchRoles.call(loadOptionsContext({ url })).catch((e: unknown) => e);

		expect(error).toBeInstanceOf(NodeApiError);
		expect((error as NodeApiError).message).toContain(
			`Cannot reach the Role Injector worker at ${url}/v1/roles`,
		);
	});
});

describe('variable names', () => {
	const url = () => inject('workerUrl');

	it("are the chosen role's declared variables, required ones marked", async () => {
		const options = await roleVariables.call(
			loadOptionsContext({ url: url() }, { role: { __rl: true, mode: 'list', value: 'tester' } }),
		);

		expect(options.map((option) => option.value)).toContain('user_name');
		const userName = options.find((option) => option.value === 'user_name');
		expect(userName?.name).toBe('user_name (required)');
		expect(userName?.description).toMatch(/^Required/);
		expect(new RoleInjector().methods.loadOptions.roleVariables).toBe(roleVariables);
	});

	it('ask for a role first, and name an unknown one', async () => {
		const none = await roleVariables.call(loadOptionsContext({ url: url() }, {})).catch((e: unknown) => e);
		const unknown = await roleVariables
			.call(loadOptionsContext({ url: url() }, { role: 'no-such-role' }))
			.catch((e: unknown) => e);

		expect((none as Error).message).toContain('Choose a role first');
		expect(unknown).toBeInstanceOf(NodeApiError);
		expect((unknown as NodeApiError).message).toContain("role 'no-such-role' not found");
	});
});
